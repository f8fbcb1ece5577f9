/**
 * The durable half of scripts/bench/minimal-durable.ts (issue 15, design (a) idealised): one table,
 * a batch's sets INSERTed and its taken ids DELETEd in one transaction, COMMIT with
 * `PRAGMA synchronous` FULL or NORMAL on a WAL database. The main-thread mode calls `apply` directly;
 * the Worker mode packs the batch into one ArrayBuffer on the main thread (`pack`), transfers it,
 * and the Worker (durable-worker.ts) unpacks it and calls the same `apply`.
 */
import { Database } from "bun:sqlite";

export interface SetRow {
  id: number;
  queue: string;
  flags: number;
  body: Buffer;
}

export type Sync = "full" | "normal";

export interface Durable {
  apply(sets: readonly SetRow[], takes: readonly number[]): void;
  close(): void;
}

/** Opens (or creates) the database the way mcq's SQLite store does: WAL, synchronous FULL or NORMAL. */
export function openDurable(path: string, sync: Sync): Durable {
  const db = new Database(path, { create: true });
  db.run("PRAGMA journal_mode = WAL");
  db.run(`PRAGMA synchronous = ${sync === "full" ? "FULL" : "NORMAL"}`);
  db.run("CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY, queue TEXT NOT NULL, flags INTEGER NOT NULL, body BLOB NOT NULL)");
  const insert = db.prepare("INSERT INTO messages (id, queue, flags, body) VALUES (?, ?, ?, ?)");
  const remove = db.prepare("DELETE FROM messages WHERE id = ?");
  const begin = db.prepare("BEGIN");
  const commit = db.prepare("COMMIT");
  return {
    apply(sets, takes) {
      if (sets.length === 0 && takes.length === 0) return; // nothing to make durable: no transaction
      begin.run();
      try {
        for (const s of sets) insert.run(s.id, s.queue, s.flags, s.body);
        for (const id of takes) remove.run(id);
        commit.run();
      } catch (e) {
        if (db.inTransaction) db.run("ROLLBACK");
        throw e;
      }
    },
    close: () => db.close(),
  };
}

// The packed batch: u32 sets, u32 takes, then per set f64 id, u32 flags, u16 queue length, the
// queue's bytes, u32 body length, the body; then each take's id as f64. Little-endian.
const HEADER = 8;
const SET_FIXED = 8 + 4 + 2 + 4;

/**
 * Packs a batch into a fresh ArrayBuffer (never Buffer.allocUnsafe: its small buffers share a pool,
 * which a transfer would detach). `sets[i]` is skipped where `skip[i]` (set and taken in one batch).
 */
export function pack(sets: readonly SetRow[], skip: readonly boolean[], takes: readonly number[]): ArrayBuffer {
  let size = HEADER + takes.length * 8;
  let live = 0;
  for (let i = 0; i < sets.length; i++) {
    if (skip[i]) continue;
    live++;
    size += SET_FIXED + sets[i]!.queue.length + sets[i]!.body.length;
  }
  const ab = new ArrayBuffer(size);
  const b = Buffer.from(ab);
  b.writeUInt32LE(live, 0);
  b.writeUInt32LE(takes.length, 4);
  let at = HEADER;
  for (let i = 0; i < sets.length; i++) {
    if (skip[i]) continue;
    const s = sets[i]!;
    b.writeDoubleLE(s.id, at);
    b.writeUInt32LE(s.flags, at + 8);
    b.writeUInt16LE(s.queue.length, at + 12);
    at += 14 + b.write(s.queue, at + 14, "latin1");
    b.writeUInt32LE(s.body.length, at);
    at += 4 + s.body.copy(b, at + 4);
  }
  for (const id of takes) at = b.writeDoubleLE(id, at);
  return ab;
}

/** The inverse of pack: the rows, bodies as views of the transferred buffer (no copy). */
export function unpack(ab: ArrayBuffer): { sets: SetRow[]; takes: number[] } {
  const b = Buffer.from(ab);
  const nSets = b.readUInt32LE(0);
  const nTakes = b.readUInt32LE(4);
  const sets: SetRow[] = [];
  let at = HEADER;
  for (let i = 0; i < nSets; i++) {
    const id = b.readDoubleLE(at);
    const flags = b.readUInt32LE(at + 8);
    const qlen = b.readUInt16LE(at + 12);
    const queue = b.toString("latin1", at + 14, at + 14 + qlen);
    at += 14 + qlen;
    const blen = b.readUInt32LE(at);
    sets.push({ id, queue, flags, body: b.subarray(at + 4, at + 4 + blen) });
    at += 4 + blen;
  }
  const takes: number[] = [];
  for (let i = 0; i < nTakes; i++, at += 8) takes.push(b.readDoubleLE(at));
  return { sets, takes };
}
