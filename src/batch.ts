/**
 * Group commit and the one failure path. Every change made since the last commit, by any
 * connection or by housekeeping, belongs to one store transaction (the batch); replies are held
 * until it commits, so STORED and VALUE never leave before the change behind them is durable.
 *
 * Whatever changes state registers how to undo it (onUndo), and every reply that reports a
 * change is marked where the batch began in it (depends). If the store fails, fail() is the
 * only way out: the store rolls back, the undos run newest first, and each marked reply is cut
 * back to its mark and ended there (session.ts settle): one reply per request, always.
 */
import type { Mark, Reply } from "./session";
import { settle } from "./session";
import { StoreError, type QueueStore } from "./store/store";

export interface Batch {
  /** Marks a reply as reporting changes of this batch (once per batch). */
  depends(reply: Reply): void;
  /** Registers how to revert a change outside the store if the batch is undone. */
  onUndo(fn: () => void): void;
  /** Where this batch began in the reply, or null if the batch has not touched it. */
  markOf(reply: Reply): Mark | null;
  /** Undoes the batch after a failure. */
  fail(error: unknown): void;
  /** Commits; a failure undoes the batch instead. Resolves when replies may be released. */
  commit(): void | Promise<void>;
}

export function createBatch(store: QueueStore, onFailure: (error: StoreError) => void): Batch {
  let marks: Reply[] = [];
  let undo: (() => void)[] = [];
  /** Numbers the batches, so a mark left from an earlier one is known as stale. */
  let epoch = 1;

  function clear(): void {
    marks = [];
    undo = [];
    epoch++;
  }

  function fail(e: unknown): void {
    const error = e instanceof StoreError ? e : new StoreError(String(e));
    onFailure(error);
    try {
      store.rollback();
    } catch (e2) {
      onFailure(e2 instanceof StoreError ? e2 : new StoreError(String(e2)));
    }
    const [replies, undos, failed] = [marks, undo, epoch];
    clear();
    for (let i = undos.length - 1; i >= 0; i--) undos[i]!();
    for (const reply of replies) if (reply.mark?.epoch === failed) settle(reply, reply.mark, error.message);
  }

  function commit(): void | Promise<void> {
    if (!store.dirty()) {
      clear();
      return;
    }
    try {
      const done = store.commit();
      if (done instanceof Promise) return done.then(clear, fail);
      clear();
    } catch (e) {
      fail(e);
    }
  }

  return {
    depends(reply) {
      if (reply.mark !== null && reply.mark.epoch === epoch) return;
      const taken = reply.taken === null ? 0 : reply.taken.length;
      reply.mark = { epoch, pieces: reply.pieces.length, size: reply.size, values: reply.values, taken };
      marks.push(reply);
    },
    onUndo: (fn) => void undo.push(fn),
    markOf: (reply) => (reply.mark !== null && reply.mark.epoch === epoch ? reply.mark : null),
    fail,
    commit,
  };
}
