/**
 * Delayed delivery in the SQLite store (store.ts, Delays): `set q/delay=<ms>` and
 * `get q/abort/delay=<ms>`.
 *
 * A delayed message waits in its own table, `delayed`, not among the queue's messages, so the
 * head index of `messages` and the read-ahead (sqlite-heads.ts) never step over messages that
 * are not due: a queue holding a million delayed messages costs a take nothing. Each queue knows
 * in memory how many it holds and the earliest due time (Queue.delayed, Queue.nextDue), so a take
 * or a set asks the file only when something is due. Then the due messages move to `messages`,
 * by due time then arrival, each with a new id: that is their place in the queue (FIFO by due
 * time), and ids stay increasing in queue order, which the head index and the range deletes
 * rely on. A message moves with its delivery count, which dead letters will need.
 *
 * The move happens in the batch of the take or set that found it due, or of housekeeping
 * (promoteDue), so it commits or rolls back with it; after kill -9 a message is in exactly one
 * of the two tables, and never returned before its due time, which is in the file.
 */
import type { Statement } from "bun:sqlite";
import type { Queue } from "./sqlite-heads";

/** Due messages moved per take: a take never does unbounded work; the rest move at the next. */
const PROMOTE_BATCH = 1000;

export interface DelayStatements {
  insertDelayed: Statement;
  delayOpen: Statement;
  deleteOpen: Statement;
  dueInQueue: Statement;
  promoteOne: Statement;
  deleteDelayed: Statement;
  nextDueOf: Statement;
  queuesDue: Statement;
  delayedCounts: Statement;
}

export interface DelayDeps {
  st: DelayStatements;
  /** Opens the batch's transaction. */
  tx(): void;
  /** The next message id. */
  nextId(): number;
  /** Writes q's pending messages, which are older than anything due now. */
  materialize(q: Queue): void;
  /** Drops q's read-ahead: messages were added behind its back. */
  forget(q: Queue): void;
  changed: Set<Queue>;
  byId: Map<number, Queue>;
  sums: { open: number };
}

export function createSqliteDelays(d: DelayDeps) {
  const { st, changed } = d;
  /** Delayed messages in every queue: with none, housekeeping asks the file nothing. */
  let total = 0;

  /** Moves up to `limit` of q's due messages to its tail; returns how many moved. */
  function promote(q: Queue, now: number, limit = PROMOTE_BATCH): number {
    if (q.nextDue > now) return 0;
    d.tx();
    d.materialize(q);
    const due = st.dueInQueue.values(q.id, now, limit) as [number][];
    for (const [id] of due) {
      st.promoteOne.run(d.nextId(), id);
      st.deleteDelayed.run(id);
    }
    q.delayed -= due.length;
    total -= due.length;
    q.nextDue = q.delayed > 0 ? ((st.nextDueOf.values(q.id)[0]![0] as number | null) ?? Infinity) : Infinity;
    d.forget(q);
    changed.add(q);
    return due.length;
  }

  /** Stores a message no take returns before `dueAt`; the caller counts it in items. */
  function hold(q: Queue, id: number, flags: number, body: Uint8Array, expiresAt: number, now: number, dueAt: number): void {
    st.insertDelayed.run(id, q.id, dueAt, flags, now, expiresAt, body);
    q.delayed++;
    total++;
    q.nextDue = Math.min(q.nextDue, dueAt);
  }

  /** Moves q's open message `id` to the delayed table until `dueAt`; false if it was not open. */
  function delayOpen(q: Queue, id: number, dueAt: number): boolean {
    d.tx();
    if (st.delayOpen.run(id, dueAt).changes === 0) return false;
    st.deleteOpen.run(id);
    q.open--;
    d.sums.open--;
    q.delayed++;
    total++;
    q.nextDue = Math.min(q.nextDue, dueAt);
    changed.add(q);
    return true;
  }

  /** Every queue's due messages, up to `limit`; returns the names of the queues that gained some. */
  function promoteDue(now: number, limit: number): string[] {
    if (total <= 0) return [];
    const qids = new Set((st.queuesDue.values(now, limit) as [number][]).map(([qid]) => qid));
    const names: string[] = [];
    for (const qid of qids) {
      const q = d.byId.get(qid);
      if (q !== undefined && promote(q, now, limit) > 0) names.push(q.name);
    }
    return names;
  }

  /** Reads every queue's delayed count and earliest due time (at start and after a rollback). */
  function load(): void {
    total = 0;
    for (const [qid, count, due] of st.delayedCounts.values() as [number, number, number][]) {
      total += count;
      const q = d.byId.get(qid);
      if (q === undefined) continue;
      q.delayed = count;
      q.nextDue = due;
    }
  }

  /** q's delayed messages are being deleted with the rest (flush, drop). */
  function emptied(q: Queue): void {
    total -= q.delayed;
    q.delayed = 0;
    q.nextDue = Infinity;
  }

  return { promote, hold, delayOpen, promoteDue, load, emptied };
}
