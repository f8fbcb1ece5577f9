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
import type { FeatureCounts } from "./store";

export const COUNTER_LOG_SCHEMA = "CREATE TABLE counter_log(id INTEGER PRIMARY KEY, data BLOB NOT NULL)";

export interface Counters {
  total: number;
  fetched: number;
  items: number;
  bytes: number;
  /** The feature counters (schema 4 on; store.ts FeatureCounts). */
  features: FeatureCounts;
}

/**
 * Per queue: qid, total, fetched, items, bytes, then the five feature counters: float64s, exact
 * up to 2^53. Files of schema 2 and 3 logged the first five only (LEGACY_FIELDS); migrate() folds
 * such a log before the queues table gains the feature columns.
 */
const FIELDS = 10;
export const LEGACY_FIELDS = 5;

/** The queues table's columns of the feature counters, in FeatureCounts order. */
export const FEATURE_COLUMNS = ["deduplicated", "discarded", "dead_lettered", "dead_letter_skipped", "fanout_refused"] as const;

/**
 * Writes a queue's counters into the queues table: values (the feature counters in FEATURE_COLUMNS
 * order), then the last message id and the queue's id.
 */
export const SAVE_COUNTERS =
  `UPDATE queues SET total = ?, fetched = ?, items = ?, bytes = ?, ${FEATURE_COLUMNS.map((c) => `${c} = ?`).join(", ")}, ` +
  "last_id = max(last_id, ?) WHERE id = ?";

/** SAVE_COUNTERS's values for one queue. */
export const saveValues = (c: Counters, lastId: number, qid: number) => {
  const f = c.features;
  return [c.total, c.fetched, c.items, c.bytes, f.deduplicated, f.discarded, f.deadLettered, f.deadLetterSkipped, f.fanoutRefused, lastId, qid];
};

/** One row's data: the last message id given out, then the counters of each queue. */
export function pack(lastId: number, queues: ReadonlySet<Counters & { id: number }>): Uint8Array {
  const a = new Float64Array(1 + queues.size * FIELDS);
  a[0] = lastId;
  let i = 1;
  for (const q of queues) {
    const f = q.features;
    a[i++] = q.id;
    a[i++] = q.total;
    a[i++] = q.fetched;
    a[i++] = q.items;
    a[i++] = q.bytes;
    a[i++] = f.deduplicated;
    a[i++] = f.discarded;
    a[i++] = f.deadLettered;
    a[i++] = f.deadLetterSkipped;
    a[i++] = f.fanoutRefused;
  }
  return new Uint8Array(a.buffer);
}

/**
 * Calls `fn` for every entry of the log, oldest first; returns the largest message id it names.
 * `fields` is LEGACY_FIELDS for the log of a file of schema 2 or 3 (its feature counters are 0).
 */
export function readLog(db: Database, fn: (qid: number, counters: Counters) => void, fields = FIELDS): number {
  let lastId = 0;
  for (const [data] of db.query("SELECT data FROM counter_log ORDER BY id").values() as [Uint8Array][]) {
    const a = new Float64Array(data.slice().buffer); // slice: a copy aligned for float64
    lastId = Math.max(lastId, a[0]!);
    for (let i = 1; i + fields <= a.length; i += fields) {
      const features = fields === FIELDS
        ? { deduplicated: a[i + 5]!, discarded: a[i + 6]!, deadLettered: a[i + 7]!, deadLetterSkipped: a[i + 8]!, fanoutRefused: a[i + 9]! }
        : { deduplicated: 0, discarded: 0, deadLettered: 0, deadLetterSkipped: 0, fanoutRefused: 0 };
      fn(a[i]!, { total: a[i + 1]!, fetched: a[i + 2]!, items: a[i + 3]!, bytes: a[i + 4]!, features });
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
      for (const [qid, c] of latest) update.run(...saveValues(c, lastId, qid));
      db.run("DELETE FROM counter_log");
    })();
  } finally {
    update.finalize();
  }
}

/**
 * The log of a file of schema 2 or 3 into its queues table, inside migrate()'s transaction: the
 * rows hold no feature counters, and the table has no columns for them yet.
 */
export function foldLegacyLog(db: Database): void {
  const latest = new Map<number, Counters>();
  const lastId = readLog(db, (qid, counters) => latest.set(qid, counters), LEGACY_FIELDS);
  const update = db.prepare("UPDATE queues SET total = ?, fetched = ?, items = ?, bytes = ?, last_id = max(last_id, ?) WHERE id = ?");
  try {
    for (const [qid, c] of latest) update.run(c.total, c.fetched, c.items, c.bytes, lastId, qid);
    db.run("DELETE FROM counter_log");
  } finally {
    update.finalize();
  }
}
