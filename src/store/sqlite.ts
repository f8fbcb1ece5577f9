/**
 * The QueueStore on bun:sqlite: one database file, `mcq.db`, in the data directory (its schema
 * and how it is opened are in sqlite-file.ts).
 *
 * Each queue's counters, its read-ahead of the head, the messages set in this batch and not yet
 * written, and the head rows to delete at commit live in memory (sqlite-heads.ts). A commit saves
 * the counters it changed as one counter_log row, folded into the queues table between batches
 * (counter-log.ts).
 *
 * Durability: WAL mode; `synchronous` is FULL (fsync at every commit), NORMAL (the WAL survives
 * a killed process, not a power loss) or OFF. A batch is one transaction, committed by commit().
 * Space: auto_vacuum=INCREMENTAL is set before the first table exists; maintain() frees pages
 * in small steps, off the hot path, and the WAL is kept near WAL_LIMIT_BYTES.
 */
import type { Statement } from "bun:sqlite";
import { join } from "node:path";
import { pack, readLog, SAVE_COUNTERS } from "./counter-log";
import { createReserve } from "./reserve";
import {
  AHEAD_MAX_BODY,
  createHeads,
  newQueue,
  PENDING_MAX_BODY,
  READ_AHEAD,
  type Queue,
  type Row,
} from "./sqlite-heads";
import {
  checkAtStart,
  DB_FILE,
  OUT_OF_SPACE,
  WAL_LIMIT_BYTES,
  migrate,
  openDatabase,
  toStoreError,
  walSize,
  type SqliteOptions,
} from "./sqlite-file";
import {
  StoreError,
  type Message,
  type QueueCounters,
  type QueueDetail,
  type QueueStore,
  type StoreTotals,
} from "./store";

export { DB_FILE, StoreLockedError, type SqliteOptions, type SyncMode } from "./sqlite-file";

/** Free pages given back per maintain() step (16 MB of 4 KB pages; mostly a truncation). */
const VACUUM_STEP_PAGES = 4096;
/** Fewer free pages than this (1 MB) are kept for reuse rather than given back. */
const VACUUM_MIN_PAGES = 256;

/** Bytes kept aside for when the disk fills (reserve.ts). */
const RESERVE_BYTES = 4 * 1024 * 1024;
export function openSqliteStore(dir: string, options: SqliteOptions): QueueStore {
  const file = join(dir, DB_FILE);
  const db = openDatabase(file, options);
  migrate(db);
  checkAtStart(db, file);

  // Every statement is finalized at close: a live one would keep the file, and its lock, open.
  const statements: Statement[] = [];
  const sql = (text: string): Statement => {
    const statement = db.prepare(text);
    statements.push(statement);
    return statement;
  };
  const begin = sql("BEGIN");
  const commitTx = sql("COMMIT");
  const rollbackTx = sql("ROLLBACK");
  const createQueue = sql("INSERT INTO queues(name) VALUES (?) RETURNING id");
  const logCounters = sql("INSERT INTO counter_log(data) VALUES (?)");
  const clearLog = sql("DELETE FROM counter_log");
  const saveQueue = sql(SAVE_COUNTERS);
  const deleteQueue = sql("DELETE FROM queues WHERE id = ?");
  const insert = sql("INSERT INTO messages(id, qid, flags, created, expires, body) VALUES (?, ?, ?, ?, ?, ?)");
  const headRows = sql(
    `SELECT id, flags, expires, CASE WHEN length(body) <= ${AHEAD_MAX_BODY} THEN body END FROM messages ` +
      `WHERE qid = ? AND opened = 0 ORDER BY id LIMIT ${READ_AHEAD}`,
  );
  const byMessageId = sql("SELECT id, flags, expires, body FROM messages WHERE id = ?");
  const deleteTaken = sql("DELETE FROM messages WHERE qid = ? AND opened = 0 AND id BETWEEN ? AND ?");
  const markOpen = sql("UPDATE messages SET opened = 1, deliveries = deliveries + 1 WHERE id = ?");
  const confirmOpen = sql("DELETE FROM messages WHERE id = ? AND opened = 1 RETURNING length(body)");
  const releaseOpen = sql("UPDATE messages SET opened = 0 WHERE id = ? AND opened = 1");
  const releaseAll = sql("UPDATE messages SET opened = 0 WHERE qid = ? AND opened = 1");
  const countOpen = sql("SELECT count(*) FROM messages WHERE qid = ? AND opened = 1");
  const deleteQueueMessages = sql("DELETE FROM messages WHERE qid = ?");
  const deleteAllMessages = sql("DELETE FROM messages");
  const oldest = sql(
    "SELECT min(created) FROM (" +
      "SELECT * FROM (SELECT created FROM messages WHERE qid = ?1 AND opened = 0 ORDER BY id LIMIT 1) UNION ALL " +
      "SELECT * FROM (SELECT created FROM messages WHERE qid = ?1 AND opened = 1 ORDER BY id LIMIT 1))",
  );
  const freelist = sql("PRAGMA freelist_count");
  // Uses the partial index messages_expiry: one seek, and no transaction, when nothing is due.
  const due = sql("SELECT 1 FROM messages WHERE expires > 0 AND expires <= ? AND opened = 0 LIMIT 1");
  const sweep = sql(
    "DELETE FROM messages WHERE id IN (SELECT id FROM messages WHERE expires > 0 AND expires <= ? AND opened = 0 " +
      "LIMIT ?) RETURNING qid, length(body)",
  );

  const queues = new Map<string, Queue>();
  const byId = new Map<number, Queue>();
  const changed = new Set<Queue>();
  let lastId = 0;
  let inTx = false;
  let expired = 0;
  let expiredCommitted = 0;
  /** Queues whose counters are in counter_log rows written since the last fold. */
  const unfolded = new Set<Queue>();

  /** Reads the queues and counters from the file: at start, and after a rollback. */
  function load(): void {
    queues.clear();
    byId.clear();
    changed.clear();
    unfolded.clear();
    for (const [id, name, total, fetched, items, bytes] of db
      .query("SELECT id, name, total, fetched, items, bytes FROM queues")
      .values() as [number, string, number, number, number, number][]) {
      const open = (countOpen.values(id)[0]![0] as number) ?? 0;
      const q = newQueue(id, name, { total, fetched, items, bytes, open }, false);
      queues.set(name, q);
      byId.set(id, q);
    }
    // Counters committed since the last fold are in the log, newest last.
    const logged = readLog(db, (qid, counters) => {
      const q = byId.get(qid);
      if (q === undefined) return; // dropped since
      Object.assign(q, counters);
      unfolded.add(q);
    });
    const saved = db.query("SELECT max(last_id) FROM queues").values()[0]![0] as number | null;
    const max = db.query("SELECT max(id) FROM messages").values()[0]![0] as number | null;
    lastId = Math.max(saved ?? 0, max ?? 0, logged);
  }

  const reserve = createReserve(dir, RESERVE_BYTES);
  /** The reserve was just given back: checkpoint into that room at the rollback (see rollback). */
  let spaceReleased = false;
  /** The last commit failed (reported by writable() for /healthz). */
  let commitFailed = false;

  /** Converts an SQLite failure into the reason a client sees; a full disk releases the reserve. */
  function guard<T>(fn: () => T): T {
    try {
      return fn();
    } catch (e) {
      const error = toStoreError(e);
      if (error.message === OUT_OF_SPACE && !spaceReleased) {
        reserve.release();
        spaceReleased = true;
      }
      throw error;
    }
  }

  function tx(): void {
    if (!inTx) {
      begin.run();
      inTx = true;
    }
  }

  const heads = createHeads({ insert, headRows, byMessageId, deleteTaken }, tx, changed, () => void expired++);
  const { removed, write, takeHead, deleteTakenRows, deleteAllTakenRows, materialize, materializeAll } = heads;
  const { takePending, forget, firstLive } = heads;

  function queueFor(name: string): Queue {
    let q = queues.get(name);
    if (q === undefined) {
      const id = (createQueue.values(name)[0]![0] as number);
      q = newQueue(id, name, { total: 0, fetched: 0, items: 0, bytes: 0, open: 0 }, true);
      queues.set(name, q);
      byId.set(id, q);
    }
    changed.add(q);
    return q;
  }

  /**
   * Between batches the counters in memory are the committed ones, so folding the log needs no
   * reading of it: the queues it names get their counters from memory, and the log is emptied.
   */
  function fold(): void {
    db.transaction(() => {
      for (const q of unfolded) saveQueue.run(q.total, q.fetched, q.items, q.bytes, lastId, q.id);
      clearLog.run();
    })();
    unfolded.clear();
  }

  const message = (row: Row): Message => ({ id: row[0], flags: row[1], body: row[3] });

  // Every message that was open when the server stopped is back in its queue, at its place.
  guard(() => {
    load(); // reads the counter log too; maintain() folds it into the queues table

    db.transaction(() => {
      for (const q of queues.values()) if (q.open > 0) releaseAll.run(q.id);
    })();
    for (const q of queues.values()) q.open = 0;
  });

  return {
    enqueue: (name, flags, body, expiresAt, now) =>
      guard(() => {
        // While the disk is full, only what frees space (gets) may commit.
        if (!reserve.ok(now)) throw new StoreError(OUT_OF_SPACE);
        tx();
        const q = queueFor(name);
        const id = ++lastId;
        if (body.length <= PENDING_MAX_BODY) {
          // The body is a view into the connection's input: keep a copy of it.
          heads.hold(q, { id, flags, created: now, expires: expiresAt, body: Buffer.from(body) });
        } else {
          materialize(q);
          write(q, id, flags, now, expiresAt, body);
        }
        q.total++;
        q.items++;
        q.bytes += body.length;
        return id;
      }),

    dequeue: (name, now) =>
      guard(() => {
        const q = queues.get(name);
        if (q === undefined) return null;
        const row = firstLive(q, now);
        if (row === null) {
          // Nothing older in the file: the head, if any, was set in this batch.
          const m = takePending(q, now);
          if (m === null) return null;
          q.fetched++;
          return { id: m.id, flags: m.flags, body: m.body };
        }
        tx();
        takeHead(q, row[0]);
        q.next++;
        removed(q, row[3]);
        q.fetched++;
        return message(row);
      }),

    peek: (name, now) =>
      guard(() => {
        const q = queues.get(name);
        if (q !== undefined) materialize(q);
        const row = q === undefined ? null : firstLive(q, now);
        return row === null ? null : message(row);
      }),

    open: (name, now) =>
      guard(() => {
        const q = queues.get(name);
        if (q !== undefined) materialize(q);
        const row = q === undefined ? null : firstLive(q, now);
        if (row === null) return null;
        tx();
        markOpen.run(row[0]);
        q!.next++;
        q!.open++;
        return message(row);
      }),

    confirm: (name, id) =>
      guard(() => {
        const q = queues.get(name);
        if (q === undefined) return false;
        tx();
        const row = confirmOpen.values(id)[0];
        if (row === undefined) return false;
        q.items--;
        q.bytes -= row[0] as number;
        q.open--;
        q.fetched++;
        changed.add(q);
        return true;
      }),

    release: (name, id) =>
      guard(() => {
        const q = queues.get(name);
        if (q === undefined) return false;
        tx();
        materialize(q);
        deleteTakenRows(q); // the released message may lie between them
        if (releaseOpen.run(id).changes === 0) return false;
        q.open--;
        forget(q); // it is back before the ids read ahead
        return true;
      }),

    drop: (name) =>
      guard(() => {
        const q = queues.get(name);
        if (q === undefined) return false;
        tx();
        heads.dropMessages(q);
        deleteQueueMessages.run(q.id);
        deleteQueue.run(q.id);
        queues.delete(name);
        byId.delete(q.id);
        changed.delete(q);
        unfolded.delete(q);
        return true;
      }),

    flush: (name) =>
      guard(() => {
        const q = queues.get(name);
        if (q === undefined || q.items === 0) return;
        tx();
        heads.dropMessages(q);
        deleteQueueMessages.run(q.id);
        q.items = q.bytes = q.open = 0;
        forget(q);
        changed.add(q);
      }),

    flushAll: () =>
      guard(() => {
        tx();
        heads.dropAll();
        deleteAllMessages.run();
        for (const q of queues.values()) {
          if (q.items === 0) continue;
          q.items = q.bytes = q.open = 0;
          forget(q);
          changed.add(q);
        }
      }),

    list: () => {
      const names = [...queues.keys()].sort();
      return names.map((name): QueueCounters => {
        const q = queues.get(name)!;
        return { name, total: q.total, fetched: q.fetched };
      });
    },

    detail: (name, now) =>
      guard((): QueueDetail | null => {
        const q = queues.get(name);
        if (q === undefined) return null;
        materialize(q);
        deleteTakenRows(q);
        const created = oldest.values(q.id)[0]?.[0] as number | null;
        return {
          name,
          total: q.total,
          fetched: q.fetched,
          items: q.items,
          bytes: q.bytes,
          open: q.open,
          oldestAgeMs: created == null ? 0 : Math.max(0, now - created),
        };
      }),

    totals: (): StoreTotals => {
      let items = 0;
      let open = 0;
      for (const q of queues.values()) {
        items += q.items;
        open += q.open;
      }
      return { queues: queues.size, items, open, expired };
    },

    sweepExpired: (now, limit) =>
      guard(() => {
        // Between batches nothing is pending or taken, so the file alone says whether anything is
        // due. Opening a transaction for nothing would leave the store dirty, and maintain(),
        // which runs only when it is not, would never run (no fold, no vacuum).
        if (!inTx && due.values(now).length === 0) return 0;
        tx();
        materializeAll();
        deleteAllTakenRows(); // the sweep must not find, and count again, what was taken
        const rows = sweep.values(now, limit) as [number, number][];
        for (const [qid, bytes] of rows) {
          const q = byId.get(qid);
          if (q === undefined) continue;
          q.items--;
          q.bytes -= bytes;
          forget(q);
          changed.add(q);
        }
        expired += rows.length;
        return rows.length;
      }),

    commit: () =>
      guard(() => {
        if (!inTx) return;
        materializeAll();
        deleteAllTakenRows();
        if (changed.size > 0) {
          logCounters.run(pack(lastId, changed));
          for (const q of changed) unfolded.add(q);
        }
        changed.clear();
        try {
          commitTx.run();
          commitFailed = false;
        } catch (e) {
          commitFailed = true;
          throw e;
        }
        inTx = false;
        expiredCommitted = expired;
      }),

    rollback: () => {
      if (!inTx) return;
      inTx = false;
      heads.clear(); // load() below replaces the queues, and their pending messages with them
      try {
        rollbackTx.run();
      } catch {
        // SQLite may already have rolled back on its own (SQLITE_FULL); nothing is left to undo.
      }
      expired = expiredCommitted;
      if (spaceReleased) {
        // Move the WAL into the file while the reserve's room is ours, so the WAL restarts in
        // space it already has: the gets that free the disk can then still commit.
        spaceReleased = false;
        try {
          db.run("PRAGMA wal_checkpoint(RESTART)");
        } catch {
          // Still no room; the next maintain() tries again.
        }
      }
      guard(load);
    },

    dirty: () => inTx,

    writable: (now) => !commitFailed && reserve.ok(now),

    maintain: () =>
      guard(() => {
        if (inTx) return;
        if (unfolded.size > 0) fold();
        const free = freelist.values()[0]![0] as number;
        const vacuum = free > VACUUM_MIN_PAGES;
        if (vacuum) db.run(`PRAGMA incremental_vacuum(${VACUUM_STEP_PAGES})`);
        // Copy the WAL into the file (which shrinks if pages were vacuumed) and cut the WAL to
        // nothing: between batches no writer would restart it, so its size would stay.
        if (vacuum || walSize(file) > WAL_LIMIT_BYTES) db.run("PRAGMA wal_checkpoint(TRUNCATE)");
      }),

    close: () => {
      if (inTx) rollbackTx.run();
      inTx = false;
      try {
        if (unfolded.size > 0) fold();
        db.run("PRAGMA wal_checkpoint(TRUNCATE)");
      } finally {
        for (const statement of statements) statement.finalize();
        db.close(false);
      }
    },
  };
}
