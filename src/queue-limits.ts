/**
 * Per-queue limits (issue 12): max_items and max_bytes, from --max-items/--max-bytes or a
 * `[queues."<glob>"]` table (queue-config.ts). A set that would take its queue past a limit is
 * refused, `SERVER_ERROR queue full`, and stores nothing; with discard_old the queue's oldest
 * messages are dropped instead, in the set's batch, and counted as discarded.
 */
import type { Context } from "./context";
import { createQueueSettings, type QueueRule, type QueueSettings, type QueueSettingsTable } from "./queue-config";

export interface QueueLimits {
  /** The settings in force for a queue. */
  settings(queue: string): QueueSettings;
  /** Whether a set of `bytes` may go into `queue`, after discarding what discard_old allows. */
  admit(ctx: Context, queue: string, bytes: number): boolean;
  /** Messages discard_old dropped from `queue` since the start. */
  discarded(queue: string): number;
  /** Whether any queue has a limit (stats show the settings only then). */
  readonly limited: boolean;
}

export function createQueueLimits(config: { maxItems: number; maxBytes: number; queueRules: QueueRule[] }): QueueLimits {
  const table: QueueSettingsTable = createQueueSettings(
    { maxItems: config.maxItems, maxBytes: config.maxBytes, discardOld: false },
    config.queueRules,
  );
  const dropped = new Map<string, number>();

  const over = (s: QueueSettings, items: number, bytes: number, adding: number) =>
    (s.maxItems > 0 && items + 1 > s.maxItems) || (s.maxBytes > 0 && bytes + adding > s.maxBytes);

  return {
    limited: table.limited,
    settings: (queue) => table.of(queue),
    discarded: (queue) => dropped.get(queue) ?? 0,
    admit(ctx, queue, bytes) {
      if (!table.limited) return true;
      const s = table.of(queue);
      if (s.maxItems === 0 && s.maxBytes === 0) return true;
      if (s.maxBytes > 0 && bytes > s.maxBytes) return false; // no discarding makes room for it
      const size = ctx.store.size?.(queue) ?? null;
      if (size === null || !over(s, size.items, size.bytes, bytes)) return true;
      // A store shared by nodes answers takes later (Postgres): it cannot discard inside this set.
      if (!s.discardOld || ctx.store.refresh !== undefined) return false;
      // Drop the oldest messages that may be handed out until the set fits (open and delayed ones
      // stay). They count as fetched too: they left the queue.
      let { items, bytes: held } = size;
      while (over(s, items, held, bytes)) {
        const taken = ctx.store.dequeue(queue, ctx.now());
        if (taken === null || taken instanceof Promise) return false;
        items--;
        held -= taken.body.length;
        dropped.set(queue, (dropped.get(queue) ?? 0) + 1);
      }
      return true;
    },
  };
}
