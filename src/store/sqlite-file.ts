/**
 * The SQLite data file: opening it (pragmas, the exclusive lock), its schema, and checking it.
 * sqlite.ts builds the queue store on top.
 *
 * Layout (schema version 4, kept in PRAGMA user_version):
 *   queues(id, name, total, fetched, items, bytes, last_id, deduplicated, discarded,
 *          dead_lettered, dead_letter_skipped, fanout_refused)
 *                                                    one row per queue, with its counters as of
 *                                                    the last fold of counter_log
 *   counter_log(id, data)                            per batch, the counters of the queues it
 *                                                    changed and the highest message id, written
 *                                                    in the same transaction as the messages, so
 *                                                    they are exact after a crash (counter-log.ts)
 *   messages(id, qid, flags, created, expires, opened, deliveries, body)
 *                                                    id is global and increasing: FIFO is id order
 *   delayed(id, qid, due, flags, created, expires, deliveries, body)
 *                                                    messages no get may return before `due` (ms);
 *                                                    once due, each moves to messages with a new
 *                                                    id (sqlite-delays.ts)
 *   dedup(queue, token, until)                       idempotency tokens of `set q/id=`, each kept
 *                                                    until its window ends (sqlite-dedup.ts)
 * The highest id given out is saved with the counters (and, folded, in the last_id of the queues
 * a batch touched), so a queue never reuses an id, even once it is empty.
 *
 * Changing the schema: bump SCHEMA_VERSION, add a step to migrate() that takes a file of the
 * previous version to the new one inside one transaction, and add a test that opens a file
 * written by the previous version.
 *
 * The file is held with locking_mode=EXCLUSIVE: a second process on the same directory gets
 * SQLITE_BUSY at once, and the lock dies with the process, even on kill -9.
 */
import { Database } from "bun:sqlite";
import { statSync } from "node:fs";
import { COUNTER_LOG_SCHEMA, FEATURE_COLUMNS, foldLegacyLog } from "./counter-log";
import { FatalStoreError, StoreError } from "./store";

export type SyncMode = "full" | "normal" | "off";

export interface SqliteOptions {
  sync: SyncMode;
  /** Page cache size in MB (-m). */
  cacheMb: number;
  /** Called once, when the store fails for good (FatalStoreError), before that error is thrown. */
  onFatal?: (error: FatalStoreError) => void;
  /** Told, once opened, how many messages were open at the last stop and are back in their queues. */
  onReturned?: (count: number) => void;
  /**
   * Test seam: runs just before each COMMIT, and what it throws is taken as what COMMIT threw.
   * SQLite cannot be made to fail an fsync on demand (no PRAGMA does it), and this can.
   */
  commitFault?: () => void;
}

export const DB_FILE = "mcq.db";
/**
 * 1: queues and messages; 2: counter_log (counter-log.ts); 3: delayed and dedup; 4: the feature
 * counters in queues and in the counter log (store.ts FeatureCounts).
 */
const SCHEMA_VERSION = 4;
/** Schema 4: the queues table's feature counters (a v2 or v3 log is folded first: its rows are shorter). */
const FEATURE_SCHEMA = FEATURE_COLUMNS.map((c) => `ALTER TABLE queues ADD COLUMN ${c} INTEGER NOT NULL DEFAULT 0`);
const DELAYED_SCHEMA = [
  `CREATE TABLE delayed(
    id INTEGER PRIMARY KEY,
    qid INTEGER NOT NULL,
    due INTEGER NOT NULL,
    flags INTEGER NOT NULL,
    created INTEGER NOT NULL,
    expires INTEGER NOT NULL,
    deliveries INTEGER NOT NULL DEFAULT 0,
    body BLOB NOT NULL)`,
  // What is due anywhere (housekeeping), and what is due in one queue (a take): one seek each.
  "CREATE INDEX delayed_due ON delayed(due)",
  "CREATE INDEX delayed_queue ON delayed(qid, due, id)",
  // By name, not queue id: a token outlives a `delete` of its queue, as a producer's retry may.
  "CREATE TABLE dedup(queue TEXT NOT NULL, token TEXT NOT NULL, until INTEGER NOT NULL, UNIQUE(queue, token))",
  "CREATE INDEX dedup_until ON dedup(until)",
];
/** The WAL is checkpointed once it is larger than this, and cut back to this size. */
export const WAL_LIMIT_BYTES = 2 * 1024 * 1024;
/** A file up to this size gets a full quick_check at every start (larger: `mcq check`). */
const CHECK_AT_START_BYTES = 64 * 1024 * 1024;
export const OUT_OF_SPACE = "out of space";

/** Raised when another process holds the data file. */
export class StoreLockedError extends Error {}

/**
 * What one cached 4 KB page really costs in memory: SQLite's own accounting (a negative
 * cache_size) counts the page and its header, not the allocator rounding each one up, which
 * made `-m 64` cost 82 MB of RSS (measured: 5.1 KB per page). So `-m` is turned into a number
 * of pages at this cost, and the cache uses about the memory `-m` says.
 */
const PAGE_MEMORY_BYTES = 5300;

function cachePages(cacheMb: number): number {
  return Math.max(16, Math.floor((cacheMb * 1024 * 1024) / PAGE_MEMORY_BYTES));
}

export function openDatabase(file: string, options: SqliteOptions): Database {
  let db: Database;
  try {
    db = new Database(file, { create: true });
  } catch (e) {
    throw new StoreError(`cannot open ${file}: ${(e as Error).message}`, { cause: e });
  }
  try {
    db.run("PRAGMA busy_timeout = 0");
    db.run("PRAGMA locking_mode = EXCLUSIVE");
    // Someone else's database is refused before anything in it is changed.
    const version = db.query("PRAGMA user_version").values()[0]![0] as number;
    const tables = db.query("SELECT count(*) FROM sqlite_master").values()[0]![0] as number;
    if (!(version >= 1 && version <= SCHEMA_VERSION) && (version !== 0 || tables !== 0)) {
      throw new StoreError(`${file} is not an mcq data file of a version this mcq reads (schema ${version})`);
    }
    // Only takes effect on a file without tables: it must come before the schema.
    db.run("PRAGMA auto_vacuum = INCREMENTAL");
    db.run("PRAGMA journal_mode = WAL");
    db.run(`PRAGMA synchronous = ${options.sync.toUpperCase()}`);
    db.run(`PRAGMA cache_size = ${cachePages(options.cacheMb)}`);
    // A commit that takes the WAL past the limit copies it into the file (a PASSIVE checkpoint,
    // about 2 MB of work): the WAL then restarts from its beginning, so it stays small even
    // under a load that never pauses, and the reserve can absorb one checkpoint on a full disk.
    db.run(`PRAGMA wal_autocheckpoint = ${WAL_LIMIT_BYTES / 4096}`);
    db.run(`PRAGMA journal_size_limit = ${WAL_LIMIT_BYTES}`);
    // Take the exclusive lock now, not at the first write.
    db.run("BEGIN IMMEDIATE");
    db.run("COMMIT");
    return db;
  } catch (e) {
    db.close();
    if (e instanceof StoreError) throw e;
    const code = (e as { code?: string }).code ?? "";
    if (code.startsWith("SQLITE_BUSY") || code.startsWith("SQLITE_LOCKED")) {
      throw new StoreLockedError(`${file} is in use by another mcq process`);
    }
    if (code.startsWith("SQLITE_NOTADB") || code.startsWith("SQLITE_CORRUPT")) {
      throw new StoreError(`${file} is not an mcq data file or is corrupt (${code})`, { cause: e });
    }
    throw toStoreError(e);
  }
}

/** Creates the schema in a new file, or brings an older one up to date (openDatabase has refused others). */
export function migrate(db: Database): void {
  const version = db.query("PRAGMA user_version").values()[0]![0] as number;
  if (version === SCHEMA_VERSION) return;
  if (version >= 1 && version < SCHEMA_VERSION) {
    // One transaction: a crash leaves the file at its old version, and the next start migrates it.
    db.transaction(() => {
      if (version === 1) db.run(COUNTER_LOG_SCHEMA);
      else foldLegacyLog(db);
      if (version < 3) for (const statement of DELAYED_SCHEMA) db.run(statement);
      for (const statement of FEATURE_SCHEMA) db.run(statement);
      db.run(`PRAGMA user_version = ${SCHEMA_VERSION}`);
    })();
    return;
  }
  db.transaction(() => {
    db.run(`CREATE TABLE queues(
      id INTEGER PRIMARY KEY,
      name TEXT NOT NULL UNIQUE,
      total INTEGER NOT NULL DEFAULT 0,
      fetched INTEGER NOT NULL DEFAULT 0,
      items INTEGER NOT NULL DEFAULT 0,
      bytes INTEGER NOT NULL DEFAULT 0,
      last_id INTEGER NOT NULL DEFAULT 0,
      ${FEATURE_COLUMNS.map((c) => `${c} INTEGER NOT NULL DEFAULT 0`).join(",\n      ")})`);
    db.run(`CREATE TABLE messages(
      id INTEGER PRIMARY KEY,
      qid INTEGER NOT NULL,
      flags INTEGER NOT NULL,
      created INTEGER NOT NULL,
      expires INTEGER NOT NULL,
      opened INTEGER NOT NULL DEFAULT 0,
      deliveries INTEGER NOT NULL DEFAULT 0,
      body BLOB NOT NULL)`);
    db.run("CREATE INDEX messages_head ON messages(qid, opened, id)");
    db.run("CREATE INDEX messages_expiry ON messages(expires) WHERE expires > 0");
    db.run(COUNTER_LOG_SCHEMA);
    for (const statement of DELAYED_SCHEMA) db.run(statement);
    db.run(`PRAGMA user_version = ${SCHEMA_VERSION}`);
  })();
}

export function walSize(file: string): number {
  try {
    return statSync(`${file}-wal`).size;
  } catch {
    return 0;
  }
}

/** SQLite's failure as the short reason a client sees after SERVER_ERROR. */
export function toStoreError(e: unknown): StoreError {
  if (e instanceof StoreError) return e;
  const code = (e as { code?: string }).code ?? "";
  if (code === "SQLITE_FULL") return new StoreError(OUT_OF_SPACE, { cause: e });
  if (code.startsWith("SQLITE_IOERR")) return new StoreError(`I/O error (${code})`, { cause: e });
  if (code.startsWith("SQLITE_CORRUPT")) return new StoreError("data file is corrupt", { cause: e });
  return new StoreError(code ? `store error (${code})` : `store error: ${(e as Error).message}`, { cause: e });
}

/**
 * Whether an SQLite failure means the file's state on disk is unknown: an I/O error (fsync of
 * the WAL at COMMIT, of the file at a checkpoint, or a write). A full disk is SQLITE_FULL, not
 * this, and out-of-memory is not about the disk.
 */
function isFatalIo(e: unknown): boolean {
  const code = (e as { code?: unknown }).code;
  return typeof code === "string" && code.startsWith("SQLITE_IOERR") && code !== "SQLITE_IOERR_NOMEM";
}

export interface Fatal {
  /** Runs a step that syncs (COMMIT, a checkpoint): an I/O error there is fatal, for good. */
  syncing(fn: () => void): void;
  /** Throws the fatal error if there was one: once failed, the store does nothing more. */
  check(): void;
  failed(): boolean;
}

/** The store's one-way switch to failed (FatalStoreError); `onFatal` hears of it once. */
export function createFatal(onFatal?: (error: FatalStoreError) => void): Fatal {
  let error: FatalStoreError | null = null;
  return {
    syncing(fn) {
      try {
        fn();
      } catch (e) {
        if (!isFatalIo(e) || error !== null) throw e;
        error = new FatalStoreError(toStoreError(e).message, { cause: e });
        onFatal?.(error);
        throw error;
      }
    },
    check() {
      if (error !== null) throw error;
    },
    failed: () => error !== null,
  };
}

/**
 * What is wrong with an open data file, or nothing. `counters` also compares every queue's
 * stored counters with its messages, which reads them all (for `mcq check`, not at start).
 */
export function verify(db: Database, counters: boolean): string[] {
  const problems = (db.query("PRAGMA quick_check").values() as [string][])
    .map(([line]) => line)
    .filter((line) => line !== "ok");
  if (!counters || problems.length > 0) return problems;
  const rows = db
    .query(
      "SELECT q.name, q.items, q.bytes, count(m.id), coalesce(sum(length(m.body)), 0) FROM queues q " +
        "LEFT JOIN (SELECT id, qid, body FROM messages UNION ALL SELECT id, qid, body FROM delayed) m ON m.qid = q.id GROUP BY q.id",
    )
    .values() as [string, number, number, number, number][];
  for (const [name, items, bytes, counted, summed] of rows) {
    if (items !== counted || bytes !== summed) {
      problems.push(`queue ${name}: counters say ${items} messages of ${bytes} bytes, found ${counted} of ${summed}`);
    }
  }
  const orphans = db.query("SELECT count(*) FROM messages WHERE qid NOT IN (SELECT id FROM queues)").values()[0]![0];
  if (orphans !== 0) problems.push(`${orphans} messages belong to no queue`);
  return problems;
}

/** At start: a quick_check of files small enough for it to be quick; a corrupt file is refused. */
export function checkAtStart(db: Database, file: string): void {
  let size = 0;
  try {
    size = statSync(file).size;
  } catch {
    return;
  }
  if (size > CHECK_AT_START_BYTES) return;
  const problems = verify(db, false);
  if (problems.length > 0) {
    db.close();
    throw new StoreError(`${file} is corrupt (${problems[0]}); see mcq check -H <dir>`);
  }
}
