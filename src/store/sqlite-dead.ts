/**
 * Dead letters in the SQLite store (store.ts, DeadLetters): a message opened too often moves to
 * its dead-letter queue, and `redrive` moves messages back. A move is an INSERT of the row under
 * a new id in the target queue and a DELETE of the old one, in the batch of the abort (or
 * disconnect, or lease expiry) that triggered it: after kill -9 the message is in exactly one of
 * the two queues. New ids keep FIFO by id in the target, as a set would.
 */
import type { Statement } from "bun:sqlite";
import type { Queue, Sums } from "./sqlite-heads";

export interface DeadDeps {
  sql: (text: string) => Statement;
  tx(): void;
  nextId(): number;
  queueFor(name: string): Queue;
  queues: Map<string, Queue>;
  /** Makes the target's tail safe to append to: pending written, due messages moved. */
  prepareTail(q: Queue, now: number): void;
  /** Drops q's read-ahead (and deletes the rows taken from its head in this batch). */
  forget(q: Queue): void;
  changed: Set<Queue>;
  sums: Sums;
}

export function createSqliteDead(d: DeadDeps) {
  const deliveries = d.sql("SELECT deliveries FROM messages WHERE id = ? AND opened = 1");
  const copyTo = d.sql(
    "INSERT INTO messages(id, qid, flags, created, expires, deliveries, body) " +
      "SELECT ?1, ?2, flags, created, expires, CASE WHEN ?4 THEN 0 ELSE deliveries END, body FROM messages WHERE id = ?3",
  );
  const deleteOpen = d.sql("DELETE FROM messages WHERE id = ? AND opened = 1 RETURNING length(body)");
  const waiting = d.sql("SELECT id, length(body) FROM messages WHERE qid = ? AND opened = 0 ORDER BY id");
  const deleteOne = d.sql("DELETE FROM messages WHERE id = ?");

  /** Counts `n` messages of `bytes` as gone from `from` (fetched) and stored in `to`. */
  function moved(from: Queue, to: Queue, n: number, bytes: number): void {
    from.items -= n;
    from.bytes -= bytes;
    from.fetched += n;
    to.total += n;
    to.items += n;
    to.bytes += bytes;
    d.changed.add(from);
    d.changed.add(to);
  }

  return {
    deliveries(queue: string, id: number): number {
      if (!d.queues.has(queue)) return -1;
      return (deliveries.values(id)[0]?.[0] as number | undefined) ?? -1;
    },
    moveOpen(queue: string, id: number, target: string, now: number): boolean {
      const q = d.queues.get(queue);
      if (q === undefined || deliveries.values(id).length === 0) return false;
      d.tx();
      const t = d.queueFor(target);
      d.prepareTail(t, now);
      copyTo.run(d.nextId(), t.id, id, 1); // counted afresh there, or a retry from the DLQ would move it on at once
      const bytes = deleteOpen.values(id)[0]![0] as number;
      q.open--;
      d.sums.open--;
      moved(q, t, 1, bytes);
      d.forget(t); // a row was added behind its read-ahead's back
      return true;
    },
    redrive(from: string, to: string, now: number): number {
      const f = d.queues.get(from);
      if (f === undefined || from === to) return 0;
      d.tx();
      d.prepareTail(f, now); // its pending messages are written, so they move too
      d.forget(f); // the rows taken from its head in this batch are deleted first
      const t = d.queueFor(to);
      d.prepareTail(t, now);
      let n = 0;
      let bytes = 0;
      for (const [id, length] of waiting.values(f.id) as [number, number][]) {
        copyTo.run(d.nextId(), t.id, id, 1);
        deleteOne.run(id);
        n++;
        bytes += length;
      }
      moved(f, t, n, bytes);
      d.forget(t);
      return n;
    },
  };
}
