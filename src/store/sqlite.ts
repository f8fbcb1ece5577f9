/**
 * The QueueStore on bun:sqlite: one database file, `mcq.db`, in the data directory (its schema
 * and how it is opened are in sqlite-file.ts).
 *
 * Each queue's counters, its read-ahead of the head, the messages set in this batch and not yet
 * written, and the head rows to delete at commit live in memory (sqlite-heads.ts). A commit saves
 * the counters it changed as one counter_log row, folded into the queues table between batches
 * (counter-log.ts). Listings and per-queue details come from memory as well (sqlite-listing.ts).
 *
 * Durability: WAL mode; `synchronous` is FULL (fsync at every commit), NORMAL (the WAL survives
 * a killed process, not a power loss) or OFF. A batch is one transaction, committed by commit().
 * An I/O error at COMMIT or at a checkpoint (where SQLite fsyncs) is fatal: FatalStoreError, and
 * the store refuses everything after it (see store.ts for why, and for what the server does).
 * Space: auto_vacuum=INCREMENTAL is set before the first table exists; maintain() frees pages
 * in small steps, off the hot path, and the WAL is kept near WAL_LIMIT_BYTES. A set that might
 * not fit on the disk is refused before anything is written (space.ts).
 */
import { join } from "node:path";
import { FEATURE_COLUMNS, pack, readLog, saveValues } from "./counter-log";
import { createSpace } from "./space";
import { createListing } from "./sqlite-listing";
import { prepareStatements } from "./sqlite-statements";
import { createHeads, newQueue, noFeatures, PENDING_MAX_BODY, type Queue, type Row, type Sums } from "./sqlite-heads";
import { createSnapshots } from "./sqlite-snapshot";
import { createSqliteDelays } from "./sqlite-delays";
import { createSqliteDedup } from "./sqlite-dedup";
import { createSqliteDead } from "./sqlite-dead";
import { featureVerbs, wholeQueueVerbs } from "./sqlite-verbs";
import { checkAtStart, createFatal, DB_FILE, migrate, openDatabase, OUT_OF_SPACE, toStoreError, type SqliteOptions } from "./sqlite-file";
import { StoreRefused, type FeatureCounter, type Message, type StoreTotals, type SyncQueueStore } from "./store";

export { DB_FILE, StoreLockedError, type SqliteOptions, type SyncMode } from "./sqlite-file";

export function openSqliteStore(dir: string, options: SqliteOptions): SyncQueueStore {
  const file = join(dir, DB_FILE);
  const db = openDatabase(file, options);
  migrate(db);
  checkAtStart(db, file);

  const st = prepareStatements(db);
  const { begin, commitTx, rollbackTx, createQueue, logCounters, clearLog, saveQueue } = st;
  const { markOpen, confirmOpen, releaseOpen, releaseAll, countOpen } = st;
  const { headCreated, openCreated } = st;

  const queues = new Map<string, Queue>();
  const byId = new Map<number, Queue>();
  const changed = new Set<Queue>();
  let lastId = 0;
  let inTx = false;
  let expired = 0;
  let expiredCommitted = 0;
  /** Queues whose counters are in counter_log rows written since the last fold. */
  const unfolded = new Set<Queue>();
  /** Every queue's items and open, summed: changed with them, recounted by load(). */
  const sums: Sums = { items: 0, open: 0 };
  const listing = createListing(queues, sums, { headCreated, openCreated });

  /** Reads the queues and counters from the file: at start, and after a rollback. */
  function load(): void {
    queues.clear();
    byId.clear();
    changed.clear();
    unfolded.clear();
    type Loaded = [number, string, number, number, number, number, number, number, number, number, number];
    for (const [id, name, total, fetched, items, bytes, deduplicated, discarded, deadLettered, deadLetterSkipped, fanoutRefused] of db
      .query(`SELECT id, name, total, fetched, items, bytes, ${FEATURE_COLUMNS.join(", ")} FROM queues`)
      .values() as Loaded[]) {
      const open = (countOpen.values(id)[0]![0] as number) ?? 0;
      const features = { deduplicated, discarded, deadLettered, deadLetterSkipped, fanoutRefused };
      const q = newQueue(id, name, { total, fetched, items, bytes, open, features }, false);
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
    const maxDelayed = db.query("SELECT max(id) FROM delayed").values()[0]![0] as number | null;
    lastId = Math.max(saved ?? 0, max ?? 0, maxDelayed ?? 0, logged);
    delays.load();
    listing.rebuild();
  }

  /** Empties q's counters of what it holds (flush, drop). */
  function emptied(q: Queue): void {
    sums.items -= q.items;
    sums.open -= q.open;
    q.items = q.bytes = q.open = 0;
    delays.emptied(q);
  }

  const space = createSpace(db, dir, file, st.sql);
  /** The last commit failed (reported by writable() for /healthz). */
  let commitFailed = false;

  /** Whether the store failed for good (FatalStoreError); then every call throws that error. */
  const fatal = createFatal(options.onFatal);

  /** Converts an SQLite failure into the reason a client sees; a full disk releases the reserve. */
  function guard<T>(fn: () => T): T {
    fatal.check();
    try {
      return fn();
    } catch (e) {
      const error = toStoreError(e);
      // SQLite found the disk full (a set refused by space.admit wrote nothing: no reason to).
      if (error.message === OUT_OF_SPACE && !(e instanceof StoreRefused)) space.full();
      throw error;
    }
  }

  function tx(): void {
    if (!inTx) {
      begin.run();
      inTx = true;
    }
  }

  const heads = createHeads(st, tx, changed, sums, () => void expired++);
  const { removed, write, takeHead, deleteTakenRows, deleteAllTakenRows, materialize, materializeAll } = heads;
  const { takePending, forget, firstLive } = heads;
  const delays = createSqliteDelays({ st, tx, nextId: () => ++lastId, materialize, forget, changed, byId, sums });
  const { promote } = delays;
  const dead = createSqliteDead({
    sql: st.sql, tx, nextId: () => ++lastId, queueFor, queues, changed, sums, forget,
    prepareTail: (q, now) => {
      if (q.nextDue <= now) promote(q, now);
      materialize(q);
    },
  });
  /** Adds 1 to a feature counter of queue `name`, in the batch (store.ts, countFeature). */
  function countFeature(name: string, counter: FeatureCounter): void {
    const q = queues.get(name);
    if (q === undefined) return; // no stats to show it in; a token may outlive its queue
    tx();
    q.features[counter]++;
    changed.add(q);
  }
  const dedup = createSqliteDedup(st.sql, tx, () => inTx, (name) => countFeature(name, "deduplicated"));

  /** Returns q's open message `id` to its place; false if it was not open. */
  function releaseNow(q: Queue, id: number): boolean {
    tx();
    materialize(q);
    deleteTakenRows(q); // the released message may lie between them
    if (releaseOpen.run(id).changes === 0) return false;
    q.open--;
    sums.open--;
    forget(q); // it is back before the ids read ahead
    return true;
  }

  /** A set, plain or delayed: counts it, after moving what is due by now ahead of it. */
  function admit(name: string, body: Uint8Array, now: number): Queue {
    // Before any change, so that the rest of the batch (gets, which free space) can commit.
    if (!space.admit(body.length, now)) throw new StoreRefused(OUT_OF_SPACE);
    tx();
    const q = queueFor(name);
    if (q.nextDue <= now) promote(q, now);
    q.total++;
    q.items++;
    sums.items++;
    q.bytes += body.length;
    return q;
  }

  function queueFor(name: string): Queue {
    let q = queues.get(name);
    if (q === undefined) {
      const id = (createQueue.values(name)[0]![0] as number);
      q = newQueue(id, name, { total: 0, fetched: 0, items: 0, bytes: 0, open: 0, features: noFeatures() }, true);
      queues.set(name, q);
      byId.set(id, q);
      listing.added(q);
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
      for (const q of unfolded) saveQueue.run(...saveValues(q, lastId, q.id));
      clearLog.run();
    })();
    unfolded.clear();
  }

  const message = (row: Row): Message => ({ id: row[0], flags: row[1], expires: row[2], body: row[3] });

  // Every message that was open when the server stopped is back in its queue, at its place.
  guard(() => {
    load(); // reads the counter log too; maintain() folds it into the queues table

    db.transaction(() => {
      for (const q of queues.values()) if (q.open > 0) releaseAll.run(q.id);
    })();
    options.onReturned?.(sums.open);
    for (const q of queues.values()) q.open = 0;
    sums.open = 0;
  });

  const verbs = wholeQueueVerbs({
    st, guard, tx, queues, byId, heads, listing, changed, unfolded, sums, queueFor, emptied,
    expired: (n) => void (expired += n),
    inTx: () => inTx,
    charge: (length) => space.charge(length),
  });

  return {
    enqueue: (name, flags, body, expiresAt, now) =>
      guard(() => {
        const q = admit(name, body, now);
        const id = ++lastId;
        if (body.length <= PENDING_MAX_BODY) {
          // The body is a view into the connection's input: keep a copy of it.
          heads.hold(q, { id, flags, created: now, expires: expiresAt, body: Buffer.from(body) });
        } else {
          materialize(q);
          write(q, id, flags, now, expiresAt, body);
        }
        return id;
      }),

    dequeue: (name, now) =>
      guard(() => {
        const q = queues.get(name);
        if (q === undefined) return null;
        if (q.nextDue <= now) promote(q, now);
        const row = firstLive(q, now);
        if (row === null) {
          // Nothing older in the file: the head, if any, was set in this batch.
          const m = takePending(q, now);
          if (m === null) return null;
          q.fetched++;
          return m; // a Pending is a Message (with its creation time)
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
        if (q !== undefined && q.nextDue <= now) promote(q, now);
        if (q !== undefined) materialize(q);
        const row = q === undefined ? null : firstLive(q, now);
        return row === null ? null : message(row);
      }),

    open: (name, now) =>
      guard(() => {
        const q = queues.get(name);
        if (q !== undefined && q.nextDue <= now) promote(q, now);
        if (q !== undefined) materialize(q);
        const row = q === undefined ? null : firstLive(q, now);
        if (row === null) return null;
        tx();
        markOpen.run(row[0]);
        q!.next++;
        q!.open++;
        sums.open++;
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
        sums.items--;
        sums.open--;
        q.fetched++;
        changed.add(q);
        return true;
      }),

    release: (name, id) =>
      guard(() => {
        const q = queues.get(name);
        return q === undefined ? false : releaseNow(q, id);
      }),

    ...verbs,

    list: listing.list,
    has: (name) => queues.has(name),
    size: (name) => queues.get(name) ?? null,

    summaries: listing.summaries,

    detail: (name, now) => guard(() => listing.detail(name, now)),

    countFeature: (name, counter) => guard(() => countFeature(name, counter)),

    totals: (): StoreTotals => ({ queues: queues.size, items: sums.items, open: sums.open, expired }),

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
          fatal.syncing(() => {
            options.commitFault?.();
            commitTx.run();
          });
          commitFailed = false;
        } catch (e) {
          commitFailed = true;
          throw e;
        }
        inTx = false;
        expiredCommitted = expired;
        space.committed();
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
      if (fatal.failed()) return; // nothing more is read from a file whose state is unknown
      expired = expiredCommitted;
      space.rolledBack();
      guard(load);
    },

    dirty: () => inTx,

    writable: (now) => !fatal.failed() && !commitFailed && space.fits(now),

    maintain: () =>
      guard(() => {
        if (inTx) return;
        fatal.syncing(() => {
          let error: unknown = null;
          try {
            if (unfolded.size > 0) fold();
          } catch (e) {
            error = e; // on a full disk too, the checkpoint below must run, or the WAL never restarts
          }
          space.housekeep();
          if (error !== null) throw error;
        });
      }),

    ...featureVerbs({ guard, dead, dedup, delays, queues, admit, releaseNow, nextId: () => ++lastId }),

    snapshots: createSnapshots(db, file, space, fatal, () => inTx, guard),

    close: () => {
      // After a fatal error the file is left as a crash would leave it (closing would checkpoint).
      if (fatal.failed()) return;
      try {
        if (inTx) rollbackTx.run();
      } catch {
        // A commit that failed for space rolled back already.
      }
      inTx = false;
      try {
        if (unfolded.size > 0) fold();
        db.run("PRAGMA wal_checkpoint(TRUNCATE)");
      } catch (e) {
        // On a full disk both may fail, and neither is needed: the next start reads the counter
        // log and the WAL. Anything else is reported.
        if (toStoreError(e).message !== OUT_OF_SPACE) throw e;
      } finally {
        st.finalize();
        db.close(false);
      }
    },
  };
}
