/**
 * Disk space for the SQLite store (sqlite.ts): whether new messages fit, the reserve, and the
 * housekeeping that gives free pages back.
 *
 * A set is refused at enqueue, before anything is written, when the new messages of its batch
 * might not fit; gets, which free space, are never refused. Why then and not at commit: SQLite
 * writes a transaction's pages to the WAL at COMMIT, and a COMMIT that fails with SQLITE_FULL
 * rolls the whole transaction back (measured with bun:sqlite), so neither a retry nor a
 * savepoint around the inserts could keep the gets of that batch. A set refused up front fails
 * alone (StoreRefused) and leaves the batch as it was. A commit can still fail when something
 * else fills the disk between two looks; the reserve (reserve.ts) is then given back, and that
 * one batch fails whole.
 *
 * Where new messages go: into free pages inside the file, which consumers free (no growth), or
 * into the room left on the file system. Their pages are written twice, to the WAL at commit and
 * into the file at the checkpoint, so N bytes of new pages need, of disk room:
 *   WAL growth   max(0, N + SLACK_BYTES - what the WAL file holds when it restarts from its start)
 *   file growth  max(0, N - free pages) + growth already committed to the WAL
 * where SLACK_BYTES is kept for the WAL pages of deletes and counters. The disk, the free pages and the
 * WAL are looked at again when a set does not fit the last look (see check()), and at every
 * maintain(); in between, what was admitted since counts against the last look.
 *
 * The reserve's share of the disk is never room for sets: while its file (reserve.ts) holds the
 * share, sets see the rest of the room; once the file is given back, they still do not see the
 * share. It is for what cannot be refused: the pages a checkpoint adds to the file for frames the
 * WAL holds beyond its end, give-backs (restore), the WAL frames of gets, and rows SQLite writes
 * whole again (a message opened a second time: its record changes size, so its new pages are
 * written before its old ones are freed, past the file's end when nothing is free). Before, sets
 * took the share once the file was given back, and the next such growth found no room: the
 * checkpoint could not grow the file, so the WAL never restarted and every batch, gets and
 * give-backs included, failed until a restart (stress seed 1058551878). Now a checkpoint that
 * cannot grow the file gives the reserve back and is run again at once, and what cannot be
 * refused grows into the share. Once it has used part of the share, sets take only the free
 * pages beyond those that make up for it, and housekeeping gives those back to the disk (a
 * vacuum step, however few), so the share is whole again before sets grow the file.
 *
 * Low on room (the reserve given back, or less than LOW_ROOM_BYTES free), every commit is
 * followed by a checkpoint, so that the next batch restarts the WAL and reuses its file instead
 * of growing it, and maintain() keeps the WAL file instead of cutting it to nothing. Before, the
 * WAL was truncated and a vacuum step wrote 16 MB to it: on a full disk neither the vacuum nor
 * the deletes that free space could commit, and sets were refused for good.
 */
import type { Database, Statement } from "bun:sqlite";
import { statfsSync, statSync } from "node:fs";
import { createReserve } from "./reserve";
import { WAL_LIMIT_BYTES, walSize } from "./sqlite-file";

/** Bytes kept aside for when the disk fills (reserve.ts). */
const RESERVE_BYTES = 4 * 1024 * 1024;
/** WAL room always left for what is not a new message: the pages of deletes, counters, queues. */
const SLACK_BYTES = 1024 * 1024;
/** Below this much room on the file system the WAL is made to restart after every commit. */
const LOW_ROOM_BYTES = 16 * 1024 * 1024;
/** A set that does not fit looks at the disk again at most this often, unless sets were stored since. */
const RECHECK_MS = 100;
/** Free pages given back per maintain() step at most (16 MB of 4 KB pages). */
const VACUUM_STEP_PAGES = 4096;
/** Fewer free pages than this (1 MB) are kept for reuse rather than given back. */
const VACUUM_MIN_PAGES = 256;
/** WAL bytes written per byte a vacuum step gives back: each page moved, plus pointer maps (1.02 measured). */
const VACUUM_WAL_FACTOR = 1.5;

export interface Space {
  /** Whether a new message of `length` bytes fits; if so it counts against the batch. */
  admit(length: number, now: number): boolean;
  /** Whether a small message would fit now (for writable()). */
  fits(now: number): boolean;
  /** The batch committed: its messages are on disk; low on room, the WAL is checkpointed. */
  committed(): void;
  /** The batch was rolled back; just after the reserve was given back, the WAL is checkpointed. */
  rolledBack(): void;
  /** A message that may not be refused (a give-back) takes room: counted, never refused. */
  charge(length: number): void;
  /** SQLite reported a full disk: give the reserve back. */
  full(): void;
  /** maintain()'s step, between batches: look again, give free pages back, checkpoint. */
  housekeep(): void;
  /** While a backup copies the data file (Snapshots), no checkpoint may write into it. */
  holdCheckpoints(hold: boolean): void;
}

/** `sql` prepares a statement that the store finalizes at close. */
export function createSpace(db: Database, dir: string, file: string, sql: (text: string) => Statement): Space {
  const reserve = createReserve(dir, RESERVE_BYTES);
  const pageSize = db.query("PRAGMA page_size").values()[0]![0] as number;
  const freelist = sql("PRAGMA freelist_count");
  const pageCount = sql("PRAGMA page_count");
  const checkpoints = {
    PASSIVE: sql("PRAGMA wal_checkpoint(PASSIVE)"),
    RESTART: sql("PRAGMA wal_checkpoint(RESTART)"),
    TRUNCATE: sql("PRAGMA wal_checkpoint(TRUNCATE)"),
  };

  // The last look, and what was admitted since.
  let room = 0;
  let freeBytes = 0;
  let pendingGrowth = 0;
  let walBytes = 0;
  let low = true;
  let lookedAt = -Infinity;
  /** Bytes admitted and committed since the last look. */
  let since = 0;
  /** Bytes admitted in the current batch. */
  let batch = 0;
  /** The WAL was wholly checkpointed since the last commit: the next one writes from its start. */
  let walRestarts = false;
  /** The reserve was just given back: checkpoint into its room at the rollback. */
  let released = false;
  /** A backup is copying the data file: checkpoints wait (the WAL grows meanwhile). */
  let holding = false;

  function look(): void {
    room = diskRoom();
    if (!reserve.held() && room >= 2 * reserve.bytes + SLACK_BYTES && reserve.take()) room -= reserve.bytes;
    freeBytes = (freelist.values()[0]![0] as number) * pageSize;
    let fileBytes = 0;
    try {
      fileBytes = statSync(file).size;
    } catch {
      // Not yet written: all of it is growth.
    }
    pendingGrowth = Math.max(0, (pageCount.values()[0]![0] as number) * pageSize - fileBytes);
    walBytes = walSize(file);
    since = 0;
    low = !reserve.held() || room < LOW_ROOM_BYTES;
  }

  function diskRoom(): number {
    try {
      const s = statfsSync(dir);
      return s.bavail * s.bsize;
    } catch {
      return 0;
    }
  }

  /** Bytes of pages a message of `length` bytes may take in the file, erring high. */
  function cost(length: number): number {
    // A row of up to about a page sits in a table leaf, with its index entries (about 30 bytes
    // each), and leaves are seldom full; a longer body goes to overflow pages of pageSize - 4.
    if (length < pageSize - 200) return Math.ceil((length + 100) * 1.5);
    return (Math.ceil(length / (pageSize - 4)) + 1) * pageSize;
  }

  /** What the WAL file can take without growing, when it restarts. */
  function walCredit(): number {
    return walRestarts ? Math.min(walBytes, WAL_LIMIT_BYTES) : 0;
  }

  /**
   * The room sets may use: all of it while the reserve file holds the reserve's share, none of
   * that share once the file is given back (the share is for what cannot be refused). Negative
   * when what cannot be refused has used part of the share.
   */
  function spare(): number {
    return room - (reserve.held() ? 0 : reserve.bytes);
  }

  function fitsBytes(extra: number): boolean {
    const adding = since + batch + extra;
    const walGrowth = Math.max(0, adding + SLACK_BYTES - walCredit());
    const freeLeft = freeBytes - adding;
    const fileGrowth = Math.max(0, -freeLeft) + pendingGrowth;
    if (walGrowth + fileGrowth > Math.max(0, spare())) return false;
    // Short of the reserve's share: free pages that make up for it stay free, for housekeeping
    // to give back to the disk (vacuumPages), and sets take only what is free beyond them.
    return spare() >= 0 || freeLeft >= -spare();
  }

  /**
   * fitsBytes, on a fresh look if the last one says no: at once if sets were stored since (the
   * look is out of date, and gets may have freed pages since), else at most every RECHECK_MS.
   */
  function check(bytes: number, now: number): boolean {
    if (fitsBytes(bytes)) return true;
    if (since === 0 && now - lookedAt < RECHECK_MS) return false;
    lookedAt = now;
    look();
    return fitsBytes(bytes);
  }

  function checkpoint(mode: keyof typeof checkpoints): void {
    if (holding) return;
    let r: number[];
    try {
      r = checkpoints[mode].values()[0] as number[];
    } catch (e) {
      // The file could not grow by the pages the WAL holds beyond its end: that is what the
      // reserve is for. Give it back and copy the WAL at once, so that the WAL restarts.
      if ((e as { code?: string }).code !== "SQLITE_FULL" || !reserve.held()) throw e;
      giveBack();
      r = checkpoints[mode].values()[0] as number[];
    }
    const [busy, log, done] = r;
    walRestarts = busy === 0 && log === done;
  }

  /** Free pages a vacuum step may give back now: the pages it moves go through the WAL first. */
  function vacuumPages(): number {
    const free = freeBytes / pageSize;
    // A few free pages are kept for reuse, unless the reserve's share is short of them.
    if (free <= VACUUM_MIN_PAGES && spare() >= 0) return 0;
    const afford = Math.floor(Math.max(0, walCredit() + room - SLACK_BYTES) / (pageSize * VACUUM_WAL_FACTOR));
    return Math.min(VACUUM_STEP_PAGES, free, afford);
  }

  /** Gives the reserve file back to the file system (its share stays out of sets' reach). */
  function giveBack(): void {
    reserve.release();
    low = true;
    lookedAt = -Infinity; // the next set that does not fit looks again at once
  }

  look();

  return {
    admit(length, now) {
      const bytes = cost(length);
      if (!check(bytes, now)) return false;
      batch += bytes;
      return true;
    },

    fits: (now) => check(cost(1), now),

    committed() {
      since += batch;
      batch = 0;
      walRestarts = false;
      if (!low) return;
      try {
        checkpoint("PASSIVE");
      } catch {
        // The commit stands; the WAL is simply not counted on until a checkpoint succeeds.
      }
    },

    rolledBack() {
      batch = 0;
      walRestarts = false;
      if (!released && !low) return;
      // Move the WAL into the file (while the reserve's room is ours, if it was just given back),
      // so the WAL restarts in space it already has: the gets that free the disk can then still
      // commit. Low on room this is done after every failed batch: a batch that failed for space
      // may have done so because the frames of earlier commits were not yet checkpointed.
      released = false;
      try {
        checkpoint("RESTART");
      } catch {
        // Still no room; the next maintain() tries again.
      }
    },

    charge(length) {
      batch += cost(length);
    },

    full() {
      if (reserve.held()) {
        giveBack();
        released = true;
      }
      low = true;
    },

    housekeep() {
      look();
      if (low) checkpoint("PASSIVE"); // after the fold's commit, so the vacuum restarts the WAL
      const pages = holding ? 0 : vacuumPages(); // pages moved now could not reach the file
      if (pages > 0) db.run(`PRAGMA incremental_vacuum(${pages})`);
      // Copy the WAL into the file (which shrinks if pages were vacuumed). With room to spare
      // the WAL is cut to nothing, since between batches no writer would restart it; low on
      // room it is kept, as the room the next batches write into.
      if (pages > 0 || walSize(file) > WAL_LIMIT_BYTES) checkpoint(low ? "RESTART" : "TRUNCATE");
    },

    holdCheckpoints(hold) {
      holding = hold;
    },
  };
}
