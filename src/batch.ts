/**
 * Group commit and the one failure path. Every change made since the last commit, by any
 * connection or by housekeeping, belongs to one store transaction: the open batch. Its replies
 * are held until it is durable, so STORED and VALUE never leave before the change behind them.
 *
 * Whatever changes state registers how to undo it (onUndo), and every reply that reports a
 * change is marked where each batch began in it (depends). If the store fails, fail() is the
 * only way out: the store rolls back, the undos run newest first, and each marked reply is cut
 * back to its mark and ended there (session.ts settle): one reply per request, always.
 *
 * Batches in flight: a store whose commit completes later lets the next batch run meanwhile.
 * They become durable in order; a batch that fails takes every later one with it, since those
 * were built on its changes. A synchronous store (SQLite) never has one in flight.
 */
import type { Mark, Reply } from "./session";
import { settle, takenCount } from "./session";
import { StoreError, type QueueStore } from "./store/store";

export interface Batch {
  /** Marks a reply as reporting changes of the open batch (once per batch). */
  depends(reply: Reply): void;
  /** Registers how to revert a change outside the store if the open batch is undone. */
  onUndo(fn: () => void): void;
  /** The open batch's number: a take issued now belongs to it (see fail). */
  epoch(): number;
  /** The batch that took the reply's `index`-th message (a plain get's), from its marks. */
  takenIn(reply: Reply, index: number): number;
  /**
   * Whether batch `epoch` is durable, undone, or still open or committing. Only true of a batch
   * not older than the oldest batch in flight: an older undone one reads as durable (see get.ts
   * giveBackTake, which follows a batch in flight with onUndo instead).
   */
  outcome(epoch: number): "durable" | "undone" | "pending";
  /** Whether everything the reply reports is durable: it may be sent. */
  durable(reply: Reply): boolean;
  /**
   * Runs `fn` as part of batch `epoch`, which may be committing already: what it marks (depends)
   * and registers (onUndo) goes with that batch, not the open one. A networked store answers a
   * take once its batch is sent (Postgres): the reply reports that batch's change and must be cut
   * if, and only if, that batch fails. False, without running `fn`, if the batch was undone.
   */
  within(epoch: number, fn: () => void): boolean;
  /** Undoes the batch `epoch` (default: the open one) and every later one, after a failure. */
  fail(error: unknown, epoch?: number): void;
  /** Commits the open batch; a failure undoes it instead. Resolves once it is durable or undone. */
  commit(): void | Promise<void>;
  /** Batches committing now. */
  inFlight(): number;
}

/** The mark of a get that was empty when the batch began: a failure cuts it back to nothing. */
const NOTHING: Mark = { epoch: 0, pieces: 0, size: 0, values: 0, taken: 0 };

interface Open {
  epoch: number;
  replies: Reply[];
  undo: (() => void)[];
}

/** `onCommitted`: a batch that wrote is durable (an outage, if any, is over: failure-log.ts). */
export function createBatch(store: QueueStore, onFailure: (error: StoreError) => void, onCommitted: () => void = () => {}): Batch {
  let open: Open = { epoch: 1, replies: [], undo: [] };
  const flying: Open[] = [];
  /** Every batch up to this number is durable. */
  let durable = 0;
  /** The last commit in flight: the next one becomes durable only after it. */
  let chain: Promise<void> = Promise.resolve();

  const next = () => (open = { epoch: open.epoch + 1, replies: [], undo: [] });
  /** The batch depends() and onUndo() go to (within()): null for the open one. */
  let target: Open | null = null;
  /** Set by within() for a batch that is durable already: nothing it reports can be undone. */
  let settledTarget = false;
  /** A batch neither open, nor in flight, nor durable was undone. */
  const wasUndone = (epoch: number) => epoch > durable && epoch < open.epoch && !flying.some((b) => b.epoch === epoch);

  function fail(e: unknown, from = open.epoch): void {
    if (wasUndone(from)) return; // a late failure of a batch undone already: nothing more to undo
    const error = e instanceof StoreError ? e : new StoreError(String(e));
    onFailure(error);
    try {
      store.rollback();
    } catch (e2) {
      onFailure(e2 instanceof StoreError ? e2 : new StoreError(String(e2)));
    }
    from = Math.max(from, durable + 1); // a batch that is durable cannot be undone
    const undone = [...flying.filter((b) => b.epoch >= from), open];
    while (flying.length > 0 && flying[flying.length - 1]!.epoch >= from) flying.pop();
    next();
    for (let i = undone.length - 1; i >= 0; i--) {
      const undos = undone[i]!.undo;
      for (let j = undos.length - 1; j >= 0; j--) undos[j]!();
    }
    for (const b of undone) {
      for (const reply of b.replies) {
        if (reply.epoch < from) continue; // settled already, by an earlier batch's turn here
        // A get is cut back to where the first failing batch began in it; a line is replaced.
        const mark = reply.marks?.find((m) => m.epoch >= from) ?? (reply.get ? NOTHING : null);
        if (mark === null || mark === NOTHING || mark.epoch === b.epoch) settle(reply, mark, error.message);
      }
    }
  }

  function commit(): void | Promise<void> {
    const b = open;
    let done: void | Promise<void> = undefined;
    let wrote = false;
    try {
      wrote = store.dirty();
      if (wrote) done = store.commit();
    } catch (e) {
      fail(e, b.epoch);
      return;
    }
    next();
    if (!(done instanceof Promise) && flying.length === 0) {
      durable = b.epoch;
      if (wrote) onCommitted();
      return;
    }
    flying.push(b);
    const mine = Promise.all([chain, done]).then(
      () => {
        if (flying[0] !== b) return; // undone by an earlier batch's failure
        flying.shift();
        durable = b.epoch;
        if (wrote) onCommitted();
      },
      (e) => {
        if (flying.includes(b)) fail(e, b.epoch);
      },
    );
    chain = mine.then(
      () => {},
      () => {},
    );
    return mine;
  }

  return {
    depends(reply) {
      if (settledTarget) return;
      const b = target ?? open;
      if (reply.epoch >= b.epoch) return;
      const before = reply.epoch;
      reply.epoch = b.epoch;
      b.replies.push(reply);
      if (!reply.get) return; // a one-line reply is replaced whole on a failure: no mark needed
      if (before <= durable) reply.marks = null; // its older marks are durable: forget them
      // A get with nothing in it yet needs no mark: without one, a failure cuts it to nothing.
      if (reply.size === 0 && reply.marks === null) return;
      // It was touched while empty by a batch not yet durable: that batch's mark is "nothing".
      if (reply.marks === null && before > durable) reply.marks = [{ ...NOTHING, epoch: before }];
      const taken = takenCount(reply);
      (reply.marks ??= []).push({ epoch: b.epoch, pieces: reply.pieces.length, size: reply.size, values: reply.values, taken });
    },
    onUndo: (fn) => void (settledTarget || (target ?? open).undo.push(fn)),
    within(epoch, fn) {
      if (wasUndone(epoch)) return false;
      const before = [target, settledTarget] as const;
      target = epoch === open.epoch ? open : flying.find((b) => b.epoch === epoch) ?? null;
      settledTarget = epoch <= durable;
      try {
        fn();
      } finally {
        [target, settledTarget] = before;
      }
      return true;
    },
    epoch: () => open.epoch,
    takenIn(reply, index) {
      if (reply.epoch <= durable) return reply.epoch;
      // Without marks, the one batch not durable touched it while it was empty: every take is its.
      let epoch = durable;
      for (const m of reply.marks ?? [{ ...NOTHING, epoch: reply.epoch }]) {
        if (m.taken > index) break;
        epoch = m.epoch; // the last batch that began in the reply before this take was put in
      }
      return epoch;
    },
    outcome: (epoch) => (epoch <= durable ? "durable" : wasUndone(epoch) ? "undone" : "pending"),
    durable: (reply) => reply.epoch <= durable,
    fail,
    commit,
    inFlight: () => flying.length,
  };
}
