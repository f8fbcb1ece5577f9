/**
 * What the SQLite store (sqlite.ts) tells about its queues: `stats queue`, /metrics and
 * /stats.json. With 50,000 queues these listings ran one query per queue on the event loop and
 * stalled every client for most of a second (issue 9, item 11). Now they come from memory:
 * - the counters of each queue are kept in memory anyway (sqlite-heads.ts Queue);
 * - the queues are kept sorted by name as they are created and dropped, so a listing never sorts
 *   (a sorted insert among 100,000 queues costs 5-10 us, once per new queue; merging new queues in
 *   at the next listing instead took 40 ms in one turn after 50,000 had been created);
 * - the sums of items and open (`stats`) change with each queue's (Sums), instead of being added up;
 * - the oldest age comes from the read-ahead of the head when it is loaded, and otherwise from at
 *   most two index lookups, which never write (detail() used to write the batch's pending messages
 *   and delete its taken ones first).
 */
import type { Statement } from "bun:sqlite";
import type { Queue, Sums } from "./sqlite-heads";
import type { QueueCounters, QueueDetail, QueueSummary } from "./store";

export interface ListingStatements {
  /** (qid, delTo) → created of the first unopened message after the ids taken in this batch. */
  headCreated: Statement;
  /** (qid) → created of the first open message. */
  openCreated: Statement;
}

const summary = (q: Queue): QueueSummary => ({
  name: q.name,
  total: q.total,
  fetched: q.fetched,
  items: q.items,
  bytes: q.bytes,
  open: q.open,
  delayed: q.delayed,
  features: { ...q.features }, // a copy: a listing spread over turns sees each queue as it was
});

export function createListing(queues: ReadonlyMap<string, Queue>, sums: Sums, st: ListingStatements) {
  /** Every queue, sorted by name (code unit order, which is byte order for queue names). */
  let sorted: Queue[] = [];

  /** Index of the first queue whose name is not below `name` (or, with `after`, above it). */
  function search(name: string, after = false): number {
    let lo = 0;
    let hi = sorted.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      const m = sorted[mid]!.name;
      if (m < name || (after && m === name)) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** Name order: live, and resumable across turns without repeating or skipping a name. */
  function* summaries(): IterableIterator<QueueSummary> {
    let i = 0;
    let last: Queue | null = null;
    for (;;) {
      // Queues created or dropped since the last step (or a reload after a rollback) shift
      // the array: find the place again by name, after the last name given.
      if (last !== null && sorted[i - 1] !== last) i = search(last.name, true);
      const q = sorted[i++];
      if (q === undefined) return;
      last = q;
      yield summary(q);
    }
  }

  /** Created time of the oldest message of q, or null when it has none. */
  function oldestCreated(q: Queue): number | null {
    let oldest: number | null = null;
    const pendingLeft = q.pending.length - q.taken;
    // Messages in the file that may be handed out; pending ones are newer than all of them.
    if (q.items - q.open - q.delayed - pendingLeft > 0) {
      if (q.next < q.ahead.length) oldest = q.ahead[q.next]![4];
      else oldest = (st.headCreated.values(q.id, q.delTo)[0]?.[0] as number | undefined) ?? null;
    } else if (pendingLeft > 0) oldest = q.pending[q.taken]!.created;
    if (q.open > 0) {
      const opened = st.openCreated.values(q.id)[0]?.[0] as number | undefined;
      if (opened !== undefined && (oldest === null || opened < oldest)) oldest = opened;
    }
    return oldest;
  }

  return {
    /** Sorts and sums every queue again: at start and after a rollback, which reload them. */
    rebuild(): void {
      sorted = [...queues.values()].sort((a, b) => (a.name < b.name ? -1 : 1));
      sums.items = sums.open = 0;
      for (const q of sorted) {
        sums.items += q.items;
        sums.open += q.open;
      }
    },
    added(q: Queue): void {
      sorted.splice(search(q.name), 0, q);
    },
    removed(q: Queue): void {
      const i = search(q.name);
      if (sorted[i] === q) sorted.splice(i, 1);
    },
    list: (): QueueCounters[] => sorted.map((q) => ({ name: q.name, total: q.total, fetched: q.fetched })),
    summaries,
    detail(name: string, now: number): QueueDetail | null {
      const q = queues.get(name);
      if (q === undefined) return null;
      const created = oldestCreated(q);
      const oldestAgeMs = created === null ? 0 : Math.max(0, now - created);
      return { ...summary(q), oldestAgeMs, delayed: q.delayed, deduplicated: q.features.deduplicated };
    },
  };
}
