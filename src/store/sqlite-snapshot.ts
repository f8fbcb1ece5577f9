/**
 * Snapshots of the SQLite file while the server serves (store.ts Snapshots, for `mcq backup`).
 * In WAL mode only a checkpoint writes into the data file. So after a checkpoint that copies the
 * whole WAL into it, and with every further checkpoint held (SQLite's automatic one, and the
 * store's own in space.ts), the file is a consistent snapshot that another process may copy
 * byte for byte, while commits go on into the WAL.
 */
import type { Database } from "bun:sqlite";
import type { Space } from "./space";
import { WAL_LIMIT_BYTES, type Fatal } from "./sqlite-file";
import { StoreError, type Snapshots } from "./store";

/** `inTx` says whether a batch is open; `guard` turns SQLite's failures into StoreErrors. */
export function createSnapshots(
  db: Database,
  file: string,
  space: Space,
  fatal: Fatal,
  inTx: () => boolean,
  guard: <T>(fn: () => T) => T,
): Snapshots {
  function release(): void {
    space.holdCheckpoints(false);
    if (!fatal.failed()) db.run(`PRAGMA wal_autocheckpoint = ${WAL_LIMIT_BYTES / 4096}`);
  }

  return {
    hold: () =>
      guard(() => {
        if (inTx()) throw new StoreError("a batch is open; hold the file between batches");
        db.run("PRAGMA wal_autocheckpoint = 0");
        space.holdCheckpoints(true);
        try {
          let whole = false;
          fatal.syncing(() => {
            const [busy, log, copied] = db.query("PRAGMA wal_checkpoint(TRUNCATE)").values()[0] as number[];
            whole = busy === 0 && log === copied;
          });
          if (!whole) throw new StoreError("the WAL could not be wholly checkpointed");
        } catch (e) {
          release();
          throw e;
        }
        return file;
      }),
    release,
  };
}
