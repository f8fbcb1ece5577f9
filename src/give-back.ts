/**
 * Messages taken for a client that is gone go back to their queues: those of replies it was never
 * sent, and those a take got after it left (Postgres answers a take after its batch was sent). A
 * give-back is redone if its batch fails while the take stands (giveBackTake).
 */
import type { Context } from "./context";
import { endWait, giveBack, serveWaiters } from "./get";
import type { Session } from "./session";
import type { Message } from "./store/store";

/** A message taken by a reply that never reached the socket, by a take of batch `takenIn`. */
export interface Undelivered {
  queue: string;
  message: Message;
  takenIn: number;
}

/**
 * A connection ended: its wait is dropped, its open messages go back to their queues, and so do
 * the messages of replies it was never sent (a message whose reply never reached the socket is
 * not consumed).
 */
export function endSession(ctx: Context, s: Session, undelivered: Undelivered[]): void {
  s.closed = true;
  endWait(ctx, s, "gone");
  const attempt = (fn: () => void) => {
    try {
      fn();
    } catch (e) {
      // Each give-back registered its own retry; the rest go on in a fresh batch. A message
      // taken in the batch that failed is back already (restore sees its batch undone).
      ctx.batch.fail(e);
    }
  };
  for (const [queue, id] of [...s.opens]) attempt(() => giveBack(ctx, s, queue, id, "gone"));
  for (const u of undelivered) attempt(() => restore(ctx, u));
}

export function restore(ctx: Context, u: Undelivered): void {
  giveBackTake(ctx, u.takenIn, () => {
    ctx.store.restore(u.queue, u.message, ctx.now());
    serveWaiters(ctx, u.queue);
  });
}

/**
 * Gives back (`giveBack`, in the open batch) what a take of batch `takenIn` got for a client
 * that is gone. If that batch was undone, so was the take: nothing to give back. A take of the
 * open batch is undone with the give-back if it fails. A take of an earlier batch (durable, or
 * still committing: Postgres answers a take before its COMMIT) stands even if the give-back's
 * batch fails: the give-back is then redone in a later turn, once the take's batch is durable,
 * and not at all if that batch is undone meanwhile (followed with onUndo on it: within()).
 */
export function giveBackTake(ctx: Context, takenIn: number, giveBack: () => void): void {
  const { batch } = ctx;
  const fate = batch.outcome(takenIn);
  if (fate === "undone") return;
  if (takenIn !== batch.epoch()) {
    let takeUndone = false;
    if (fate === "pending") batch.within(takenIn, () => batch.onUndo(() => (takeUndone = true)));
    const again = () => {
      if (takeUndone) return;
      if (batch.outcome(takenIn) === "pending") ctx.retry(again);
      else giveBackTake(ctx, takenIn, giveBack);
    };
    batch.onUndo(() => ctx.retry(again));
  }
  giveBack();
}

/**
 * Runs a give-back from a take's answer (a promise handler, outside any request): a failure goes
 * through batch.fail(), never out of the handler. The stop waits for the batches in flight before
 * the store closes (server.ts settle), so a closed store here means that wait ran out.
 */
export function fromAnswer(ctx: Context, giveBack: () => void): void {
  try {
    giveBack();
  } catch (e) {
    if (ctx.stopping) ctx.log.error(`stopping: a message taken for a connection that closed could not go back (${(e as Error).message})`);
    else ctx.batch.fail(e);
  }
}
