/**
 * Disk-full insurance. A file of a few MB is kept in the data directory while all is well.
 * When the disk fills, it is deleted, which gives SQLite room to commit the gets that free
 * space (each delete appends to the WAL) and to checkpoint. It is written back once the file
 * system has room for it again (space.ts decides when).
 */
import { closeSync, openSync, unlinkSync, writeSync } from "node:fs";
import { join } from "node:path";

export const RESERVE_FILE = "mcq.reserve";

export interface Reserve {
  readonly bytes: number;
  /** Whether the reserve file is in place. */
  held(): boolean;
  /** The disk is full: give the reserve back to the file system. */
  release(): void;
  /** Writes the reserve back; false if there was no room for it. */
  take(): boolean;
}

export function createReserve(dir: string, bytes: number): Reserve {
  const path = join(dir, RESERVE_FILE);
  let held = write();

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

  return {
    bytes,
    held: () => held,
    release() {
      if (held) remove();
      held = false;
    },
    take() {
      if (!held) held = write();
      return held;
    },
  };
}
