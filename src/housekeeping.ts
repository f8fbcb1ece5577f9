/**
 * Periodic work: expired messages, expired leases, give-backs a failed batch left to redo, idle
 * connections, and the store's upkeep (space given back, checkpoints). Whatever changes the
 * store runs as a task inside a turn, in its batch, and fails through batch.fail() like any
 * request; the upkeep runs after a commit, when no batch is open.
 */
import type { Conn } from "./conn";
import type { Context } from "./context";
import { expireLeases, serveWaiters } from "./get";
import type { Turns } from "./turn";

/** Expired messages deleted per housekeeping step. */
const SWEEP_BATCH = 1000;
/** Delayed messages made visible per housekeeping step (the rest at the next, or at a take). */
const PROMOTE_BATCH = 1000;

export interface Housekeeping {
  stop(): void;
}

export function startHousekeeping(ctx: Context, turns: Turns, conns: Set<Conn>, takeRetries: () => (() => void)[]): Housekeeping {
  const { config, store, log } = ctx;
  let upkeepDue = false;
  turns.afterCommit = () => {
    if (!upkeepDue) return;
    upkeepDue = false;
    try {
      store.maintain();
    } catch (e) {
      log.error(`housekeeping: ${(e as Error).message}`);
    }
  };

  function tick(): void {
    for (const retry of takeRetries()) turns.task(retry);
    if (config.expiry || ctx.limits?.table.expiring) turns.task(() => void store.sweepExpired(ctx.now(), SWEEP_BATCH));
    // Delayed messages that came due: gets waiting on their queues are served now.
    const dedup = store.dedup;
    if (dedup !== undefined) turns.task(() => void dedup.sweep(ctx.now(), SWEEP_BATCH));
    const delays = store.delays;
    if (delays !== undefined) turns.task(() => delays.promoteDue(ctx.now(), PROMOTE_BATCH).forEach((q) => serveWaiters(ctx, q)));
    if (config.openTimeoutMs > 0 || ctx.limits?.table.leases) turns.task(() => expireLeases(ctx, ctx.now()));
    if (config.idleTimeoutS > 0) closeIdle(ctx.now() - config.idleTimeoutS * 1000);
    upkeepDue = true;
    turns.task(() => {}); // a turn runs, and after its commit the upkeep
  }

  /**
   * Closes connections silent since `before`, unless a blocking get of theirs waits: one that does
   * not read its replies is silent too (what it was never sent goes back to its queues).
   */
  function closeIdle(before: number): void {
    for (const conn of conns) {
      if (conn.lastActive >= before || conn.state === "waiting" || conn.state === "closed") continue;
      log.debug(`closing connection ${conn.session.id}: idle for ${config.idleTimeoutS} s`);
      conn.socket.end();
    }
  }

  const timer = setInterval(tick, config.maintainMs);
  return { stop: () => clearInterval(timer) };
}
