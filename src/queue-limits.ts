/**
 * Per-queue policies (issue 12). Dead letters: with max_deliveries, a message opened that many
 * times without a close goes to its dead-letter queue (`dlq`, else `<q>.dlq`) instead of back, in
 * the batch of the abort, disconnect or lease expiry (store.ts, DeadLetters); when `<q>.dlq` would
 * be longer than a name may be and no dlq is set, it stays and counts as dead_letter_skipped.
 * Limits: max_items and max_bytes, from --max-items/--max-bytes or a
 * `[queues."<glob>"]` table (queue-config.ts). A set that would take its queue past a limit is
 * refused, `SERVER_ERROR queue full`, and stores nothing; with discard_old the queue's oldest
 * messages are dropped instead, in the set's batch, and counted as discarded.
 * The counters are the store's (countFeature), saved in the batch they count in; on a store that
 * does not keep them they are counted here, since the start. The settings table also holds each
 * queue's open_timeout and expiry, which get.ts and commands.ts read.
 */
import type { Context } from "./context";
import { createQueueSettings, type QueueRule, type QueueSettings, type QueueSettingsTable } from "./queue-config";
import type { FeatureCounter, FeatureCounts } from "./store/store";

export interface QueueLimits {
  /** The settings in force for a queue. */
  settings(queue: string): QueueSettings;
  /** Whether a set of `bytes` may go into `queue`, after discarding what discard_old allows. */
  admit(ctx: Context, queue: string, bytes: number): boolean;
  /** Whether any queue has a limit (stats show the settings only then). */
  readonly limited: boolean;
  /** Whether any queue has max_deliveries (stats show the dead-letter fields only then). */
  readonly deadLettering: boolean;
  /**
   * The open message `id` of `queue` is coming back: if it was opened max_deliveries times, moves
   * it to its dead-letter queue and returns that queue's name; else null (it goes back as usual).
   */
  deadLetter(ctx: Context, queue: string, id: number): string | null;
  /** The settings table (fanout.ts reads it too). */
  readonly table: QueueSettingsTable;
  /** A copy a fanout did not store in `queue` because it was full. */
  fanoutRefused(ctx: Context, queue: string): void;
  /**
   * The feature counters of `queue` on a store that does not keep them (no countFeature): counted
   * here, since the start. A store that keeps them reports them in its detail (QueueSummary.features).
   */
  counted(queue: string): Omit<FeatureCounts, "deduplicated">;
}

/** The longest queue name (docs/protocol.md). */
const MAX_NAME = 250;
type Local = Omit<FeatureCounts, "deduplicated">;
const ZERO: Local = { discarded: 0, deadLettered: 0, deadLetterSkipped: 0, fanoutRefused: 0 };

export interface LimitsConfig {
  maxItems: number;
  maxBytes: number;
  maxDeliveries: number;
  openTimeoutMs: number;
  expiry: boolean;
  queueRules: QueueRule[];
}

export function createQueueLimits(config: LimitsConfig): QueueLimits {
  const table: QueueSettingsTable = createQueueSettings(
    {
      maxItems: config.maxItems, maxBytes: config.maxBytes, discardOld: false, maxDeliveries: config.maxDeliveries, dlq: null,
      fanout: false, openTimeoutMs: config.openTimeoutMs, expiry: config.expiry, lifetimeS: 0,
    },
    config.queueRules,
  );
  /** Counters of the queues of a store that does not keep them (store.ts, countFeature). */
  const local = new Map<string, Local>();
  function count(ctx: Context, queue: string, counter: Exclude<FeatureCounter, "deduplicated">): void {
    if (ctx.store.countFeature !== undefined) return ctx.store.countFeature(queue, counter);
    let c = local.get(queue);
    if (c === undefined) local.set(queue, (c = { ...ZERO }));
    c[counter]++;
  }
  const deadLettering = config.maxDeliveries > 0 || config.queueRules.some((r) => (r.settings.maxDeliveries ?? 0) > 0);

  const over = (s: QueueSettings, items: number, bytes: number, adding: number) =>
    (s.maxItems > 0 && items + 1 > s.maxItems) || (s.maxBytes > 0 && bytes + adding > s.maxBytes);

  return {
    limited: table.limited,
    table,
    fanoutRefused: (ctx, queue) => count(ctx, queue, "fanoutRefused"),
    counted: (queue) => local.get(queue) ?? ZERO,
    deadLettering,
    deadLetter(ctx, queue, id) {
      if (!deadLettering) return null;
      const s = table.of(queue);
      const store = ctx.store.deadLetters;
      if (s.maxDeliveries === 0 || store === undefined || store.deliveries(queue, id) < s.maxDeliveries) return null;
      const target = s.dlq ?? (queue.length + 4 <= MAX_NAME ? `${queue}.dlq` : null);
      if (target === null || target === queue) {
        count(ctx, queue, "deadLetterSkipped");
        return null;
      }
      if (!store.moveOpen(queue, id, target, ctx.now())) return null;
      count(ctx, queue, "deadLettered");
      return target;
    },
    settings: (queue) => table.of(queue),
    admit(ctx, queue, bytes) {
      if (!table.limited) return true;
      const s = table.of(queue);
      if (s.maxItems === 0 && s.maxBytes === 0) return true;
      if (s.maxBytes > 0 && bytes > s.maxBytes) return false; // no discarding makes room for it
      const size = ctx.store.size?.(queue) ?? null;
      if (size === null || !over(s, size.items, size.bytes, bytes)) return true;
      if (!s.discardOld) return false;
      // A store shared by nodes (Postgres) decides what to drop in its own transaction.
      if (ctx.store.discardOld !== undefined) return ctx.store.discardOld(queue, s.maxItems, s.maxBytes, bytes);
      if (ctx.store.refresh !== undefined) return false; // takes answered later: it cannot discard inside this set
      // Open and delayed messages alone fill max_items: no drop can make room, so nothing goes.
      const kept = ctx.store.detail(queue, ctx.now());
      if (s.maxItems > 0 && kept !== null && kept.open + (kept.delayed ?? 0) + 1 > s.maxItems) return false;
      // Drop the oldest messages that may be handed out until the set fits (open and delayed ones
      // stay). They count as fetched too: they left the queue. With max_bytes, open and delayed
      // bodies (their sizes are not kept in memory) may still leave the set refused after the drop.
      let { items, bytes: held } = size;
      while (over(s, items, held, bytes)) {
        const taken = ctx.store.dequeue(queue, ctx.now());
        if (taken === null || taken instanceof Promise) return false;
        items--;
        held -= taken.body.length;
        count(ctx, queue, "discarded");
      }
      return true;
    },
  };
}
