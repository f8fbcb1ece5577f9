/**
 * Open messages this node lost while it ran (Postgres: another node reaped it, store.ts onLost):
 * the reaper sent them back to their queues, and another consumer may hold them now. A session's
 * later close of one answers as after a lease expiry, and an undone close or give-back never
 * puts one back into a session, nor releases it (it may be another consumer's open by then).
 */
import type { Context } from "./context";
import type { Session } from "./session";

/** Where the store stands on losses now: to compare with later (stillHeld). */
export const lossMark = (ctx: Context): number => ctx.store.losses?.() ?? 0;

/** Whether the store still holds open `id` of `queue`, with no loss since `mark` (SQLite, memory: always). */
export const stillHeld = (ctx: Context, mark: number, queue: string, id: number): boolean =>
  lossMark(ctx) === mark && (ctx.store.holds?.(queue, id) ?? true);

/**
 * The store found `ids` lost: the sessions holding them open forget them now, in the same step
 * as the store's `held` (not in a later turn: a close handled in between would confirm nothing
 * and answer END, and an open taken afresh in between must stay). No store verb runs here.
 */
export function dropLostOpens(ctx: Context, ids: Set<number>): void {
  for (const s of ctx.sessions) {
    for (const [queue, id] of [...s.opens]) {
      if (!ids.has(id)) continue;
      forget(s, queue);
      s.expired.add(queue);
    }
  }
}

/** An open the store lost as it was answered: a close of `queue` answers as after a lease expiry (undone with the batch). */
export function lostOpen(ctx: Context, s: Session, queue: string): void {
  if (s.expired.has(queue)) return;
  s.expired.add(queue);
  ctx.batch.onUndo(() => s.expired.delete(queue));
  s.changedIn = ctx.batch.epoch();
}

/** Drops the session's open message of `queue` (its lease too); returns the batch that opened it. */
export function forget(s: Session, queue: string): number {
  const openedIn = s.openedIn.get(queue) ?? 0;
  s.opens.delete(queue);
  s.openedIn.delete(queue);
  s.leases.delete(queue);
  return openedIn;
}
