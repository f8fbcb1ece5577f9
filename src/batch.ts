/**
 * Group commit. Every command run in one event-loop turn, on any connection, joins one store
 * transaction; its replies are held and released only after that single commit, so STORED
 * and VALUE never leave before the change behind them is durable. If the store fails, the
 * whole batch is undone: the store rolls back, the session changes are reverted, and every
 * reply that depended on the batch becomes SERVER_ERROR <reason>.
 */
import { serverError } from "./protocol/reply";
import type { Reply } from "./session";
import { StoreError, type QueueStore } from "./store/store";

export interface Batch {
  /** Marks a reply as valid only if the batch commits. */
  depends(reply: Reply): void;
  /** Registers how to revert a session change if the batch is undone. */
  onUndo(fn: () => void): void;
  /** Undoes the batch after a store failure. */
  fail(error: StoreError): void;
  /** Commits; a failure undoes the batch instead. Resolves when replies may be released. */
  commit(): void | Promise<void>;
}

export function createBatch(store: QueueStore, onFailure: (error: StoreError) => void): Batch {
  let replies: Reply[] = [];
  let undo: (() => void)[] = [];

  function clear(): void {
    replies = [];
    undo = [];
  }

  function fail(error: StoreError): void {
    onFailure(error);
    try {
      store.rollback();
    } catch (e) {
      onFailure(e instanceof StoreError ? e : new StoreError(String(e)));
    }
    for (let i = undo.length - 1; i >= 0; i--) undo[i]!();
    const line = serverError(error.message);
    for (const reply of replies) reply.pieces = [line];
    clear();
  }

  function commit(): void | Promise<void> {
    if (!store.dirty()) {
      clear();
      return;
    }
    const failed = (e: unknown) => fail(e instanceof StoreError ? e : new StoreError(String(e)));
    try {
      const done = store.commit();
      if (done instanceof Promise) return done.then(clear, failed);
      clear();
    } catch (e) {
      failed(e);
    }
  }

  return {
    depends: (reply) => void replies.push(reply),
    onUndo: (fn) => void undo.push(fn),
    fail,
    commit,
  };
}
