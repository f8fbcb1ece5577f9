/**
 * Disk-full insurance. A file of a few MB is kept in the data directory while all is well.
 * When the disk fills, it is deleted, which gives SQLite room to commit the gets that free
 * space (each delete appends to the WAL) and to checkpoint. New messages are refused until
 * the file system has room for the reserve again, and then it is written back.
 */
import { closeSync, openSync, statfsSync, unlinkSync, writeSync } from "node:fs";
import { join } from "node:path";

export const RESERVE_FILE = "mcq.reserve";
/** Check the free space at most this often while full. */
const RECHECK_MS = 500;

export interface Reserve {
  /** The disk is full: give the reserve back to the file system. */
  release(): void;
  /** Whether new messages may be stored: true unless full and still without room. */
  ok(now: number): boolean;
}

export function createReserve(dir: string, bytes: number): Reserve {
  const path = join(dir, RESERVE_FILE);
  let full = !write();
  let checkedAt = 0;

  function write(): boolean {
    let fd = -1;
    try {
      fd = openSync(path, "w");
      const block = Buffer.alloc(64 * 1024);
      for (let left = bytes; left > 0; left -= block.length) writeSync(fd, block, 0, Math.min(left, block.length));
      return true;
    } catch {
      remove();
      return false;
    } finally {
      if (fd >= 0) closeSync(fd);
    }
  }

  function remove(): void {
    try {
      unlinkSync(path);
    } catch {
      // Already gone.
    }
  }

  function room(): number {
    try {
      const s = statfsSync(dir);
      return s.bavail * s.bsize;
    } catch {
      return 0;
    }
  }

  return {
    release() {
      if (!full) remove();
      full = true;
    },
    ok(now) {
      if (!full) return true;
      if (now - checkedAt < RECHECK_MS) return false;
      checkedAt = now;
      // Room for the reserve and as much again for messages, or stay refusing.
      if (room() < 2 * bytes) return false;
      full = !write();
      return !full;
    },
  };
}
