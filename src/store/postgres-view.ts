/**
 * What a Postgres node knows of the queues without asking: every queue's counters, summed over
 * all nodes at the last refresh, plus the changes this node made since (its deltas). The store's
 * synchronous verbs (has, list, detail, totals, summaries) answer from here; a refresh replaces
 * the sums and replays the deltas of the batches Postgres had not seen when it read them.
 */
import { COUNTERS, zero, type Delta } from "./postgres-sql";
import type { QueueCounters, QueueDetail, QueueSummary, StoreTotals } from "./store";

export interface Counters extends Delta {
  /** Creation time (ms) of the oldest message, 0 when unknown or empty. */
  oldest: number;
}

/** One batch's changes to the view, in the order a refresh must replay them. */
export interface Changes {
  /** Queues dropped in the batch; deltas after a drop are all that count. */
  dropped: Set<string>;
  deltas: Map<string, Delta>;
}

const fresh = (): Counters => ({ ...zero(), oldest: 0 });

export function createView() {
  let queues = new Map<string, Counters>();
  let sums = { items: 0, open: 0, expired: 0 };
  /** Names sorted in byte order, rebuilt lazily after a queue was created or dropped. */
  let sorted: string[] | null = null;

  function add(name: string, d: Delta, created = 0): void {
    let q = queues.get(name);
    if (q === undefined) {
      queues.set(name, (q = fresh()));
      sorted = null;
    }
    if (q.items === 0 && d.items > 0) q.oldest = created;
    for (const [k] of COUNTERS) q[k] += d[k];
    if (q.items <= 0) q.oldest = 0;
    sums.items += d.items;
    sums.open += d.open;
    sums.expired += d.expired;
  }

  function drop(name: string): boolean {
    const q = queues.get(name);
    if (q === undefined) return false;
    sums.items -= q.items;
    sums.open -= q.open;
    queues.delete(name);
    sorted = null;
    return true;
  }

  function names(): string[] {
    return (sorted ??= [...queues.keys()].sort());
  }

  const summary = (name: string, q: Counters): QueueSummary => ({
    name,
    total: q.total,
    fetched: q.fetched,
    items: q.items,
    bytes: q.bytes,
    open: q.open,
    delayed: q.delayed,
    deadLettered: q.deadLettered,
    // Every feature counter summed over nodes and kept (commands.ts limitLines reads them here).
    features: {
      deduplicated: q.deduplicated, discarded: q.discarded, deadLettered: q.deadLettered,
      deadLetterSkipped: q.deadLetterSkipped, fanoutRefused: q.fanoutRefused,
    },
  });

  return {
    add,
    drop,
    get: (name: string) => queues.get(name),
    has: (name: string) => queues.has(name),
    /** Replaces everything with what Postgres summed, then replays the later batches' changes. */
    reset(rows: (Delta & { queue: string; oldest: number | null })[], later: Changes[]): void {
      queues = new Map();
      sums = { items: 0, open: 0, expired: 0 };
      sorted = null;
      for (const r of rows) {
        add(r.queue, r);
        queues.get(r.queue)!.oldest = r.oldest ?? 0;
      }
      for (const c of later) {
        for (const name of c.dropped) drop(name);
        for (const [name, d] of c.deltas) add(name, d);
      }
    },
    list: (): QueueCounters[] => names().map((name) => ({ name, total: queues.get(name)!.total, fetched: queues.get(name)!.fetched })),
    *summaries(): IterableIterator<QueueSummary> {
      // A cursor by name: queues created behind it are not seen, those ahead are.
      let last: string | null = null;
      for (;;) {
        const all = names();
        let lo = 0;
        let hi = all.length;
        while (lo < hi) {
          const mid = (lo + hi) >> 1;
          if (last === null || all[mid]! > last) hi = mid;
          else lo = mid + 1;
        }
        if (lo === all.length) return;
        last = all[lo]!;
        yield summary(last, queues.get(last)!);
      }
    },
    detail(name: string, now: number): QueueDetail | null {
      const q = queues.get(name);
      if (q === undefined) return null;
      return {
        ...summary(name, q),
        oldestAgeMs: q.items > 0 && q.oldest > 0 ? Math.max(0, now - q.oldest) : 0,
        deduplicated: q.deduplicated,
        discarded: q.discarded,
      };
    },
    totals: (): StoreTotals => ({ queues: queues.size, items: sums.items, open: sums.open, expired: sums.expired }),
  };
}

export type View = ReturnType<typeof createView>;
