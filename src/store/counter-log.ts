/**
 * The queues' counters, saved with each batch as one row instead of one UPDATE per queue.
 *
 * A batch that touches 800 queues used to run 800 UPDATEs of the queues table at its commit:
 * 0.35 us of server CPU per request at 50x16 over 1000 queues, a fifth of the total (measured).
 * Instead the commit inserts one counter_log row holding the counters of every queue it changed,
 * in the same transaction, so they are exact after a crash. The values are absolute, so the last
 * row wins and reading the log twice does no harm. The rows are folded into the queues table off
 * the hot path (the store's maintain), when the store closes, and when a file is opened.
 */
import type { Database } from "bun:sqlite";

export const COUNTER_LOG_SCHEMA = "CREATE TABLE counter_log(id INTEGER PRIMARY KEY, data BLOB NOT NULL)";

export interface Counters {
  total: number;
  fetched: number;
  items: number;
  bytes: number;
}

/** qid, total, fetched, items, bytes: float64s, exact up to 2^53. */
const FIELDS = 5;

/** Writes a queue's counters into the queues table: values, then the last message id and the queue's id. */
export const SAVE_COUNTERS =
  "UPDATE queues SET total = ?, fetched = ?, items = ?, bytes = ?, last_id = max(last_id, ?) WHERE id = ?";

/** One row's data: the last message id given out, then the counters of each queue. */
export function pack(lastId: number, queues: ReadonlySet<Counters & { id: number }>): Uint8Array {
  const a = new Float64Array(1 + queues.size * FIELDS);
  a[0] = lastId;
  let i = 1;
  for (const q of queues) {
    a[i++] = q.id;
    a[i++] = q.total;
    a[i++] = q.fetched;
    a[i++] = q.items;
    a[i++] = q.bytes;
  }
  return new Uint8Array(a.buffer);
}

/** Calls `fn` for every entry of the log, oldest first; returns the largest message id it names. */
export function readLog(db: Database, fn: (qid: number, counters: Counters) => void): number {
  let lastId = 0;
  for (const [data] of db.query("SELECT data FROM counter_log ORDER BY id").values() as [Uint8Array][]) {
    const a = new Float64Array(data.slice().buffer); // slice: a copy aligned for float64
    lastId = Math.max(lastId, a[0]!);
    for (let i = 1; i + FIELDS <= a.length; i += FIELDS) {
      fn(a[i]!, { total: a[i + 1]!, fetched: a[i + 2]!, items: a[i + 3]!, bytes: a[i + 4]! });
    }
  }
  return lastId;
}

/** Moves the log into the queues table and empties it, in one transaction. */
export function foldCounterLog(db: Database): void {
  if (db.query("SELECT 1 FROM counter_log LIMIT 1").values().length === 0) return;
  const latest = new Map<number, Counters>();
  const lastId = readLog(db, (qid, counters) => latest.set(qid, counters));
  const update = db.prepare(SAVE_COUNTERS);
  try {
    db.transaction(() => {
      // A queue dropped since has no row left to update; its entries are simply dropped too.
      for (const [qid, c] of latest) update.run(c.total, c.fetched, c.items, c.bytes, lastId, qid);
      db.run("DELETE FROM counter_log");
    })();
  } finally {
    update.finalize();
  }
}
