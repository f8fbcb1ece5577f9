/**
 * Fanout (issue 12, Kestrel's form; opt-in per DECISIONS #10): with --fanout, or `fanout = true`
 * in a queue's `[queues."<glob>"]` table, a set to `<q>` also stores a copy in every child queue
 * `<q>+<child>` (one level: `<child>` holds no `+`), in the same batch, so one STORED means every
 * copy is durable. A child exists from the first set or get that names it until it is deleted;
 * at start, every stored queue whose name has a `+` is a child. Without fanout, `+` is an
 * ordinary name byte.
 */
import type { QueueSettingsTable } from "./queue-config";

export interface Fanout {
  /** Whether any queue fans out: if not, nothing is looked up. */
  readonly enabled: boolean;
  /** A set or get named `queue`: if it is a child of a fanning-out parent, it exists from now. */
  seen(queue: string): void;
  /** `queue` was deleted: it is no longer a child. */
  dropped(queue: string): void;
  /** The children of `queue`, if it fans out (empty otherwise). */
  children(queue: string): Iterable<string>;
}

const NONE: readonly string[] = [];

export function createFanout(global: boolean, settings: QueueSettingsTable, stored: () => Iterable<string>): Fanout {
  const enabled = global || settings.anyFanout;
  const byParent = new Map<string, Set<string>>();
  const parentOf = (queue: string) => {
    const plus = queue.lastIndexOf("+");
    return plus > 0 && plus < queue.length - 1 ? queue.slice(0, plus) : null;
  };
  const fansOut = (parent: string) => global || settings.of(parent).fanout;

  function seen(queue: string): void {
    const parent = parentOf(queue);
    if (parent === null || !fansOut(parent)) return;
    let set = byParent.get(parent);
    if (set === undefined) byParent.set(parent, (set = new Set()));
    set.add(queue);
  }

  if (enabled) for (const name of stored()) seen(name);

  return {
    enabled,
    seen: (queue) => enabled && queue.includes("+") && seen(queue),
    dropped(queue) {
      const parent = parentOf(queue);
      if (parent !== null) byParent.get(parent)?.delete(queue);
    },
    children: (queue) => (enabled ? byParent.get(queue) ?? NONE : NONE),
  };
}
