/**
 * The SQLite store's verbs on whole queues and on messages outside a queue's head: a message
 * given back after its reply never left (restore), drop, flush, flush_all and the expiry sweep.
 * They share the store's state (sqlite.ts), passed in as it is.
 */
import type { createSqliteDead } from "./sqlite-dead";
import type { createSqliteDedup } from "./sqlite-dedup";
import type { createSqliteDelays } from "./sqlite-delays";
import type { createHeads, Queue, Sums } from "./sqlite-heads";
import type { createListing } from "./sqlite-listing";
import type { prepareStatements } from "./sqlite-statements";
import type { SyncQueueStore } from "./store";

export interface VerbState {
  st: ReturnType<typeof prepareStatements>;
  guard: <T>(fn: () => T) => T;
  tx: () => void;
  queues: Map<string, Queue>;
  byId: Map<number, Queue>;
  heads: ReturnType<typeof createHeads>;
  listing: ReturnType<typeof createListing>;
  changed: Set<Queue>;
  unfolded: Set<Queue>;
  sums: Sums;
  queueFor: (name: string) => Queue;
  emptied: (q: Queue) => void;
  /** Counts messages the sweep deleted. */
  expired: (n: number) => void;
  inTx: () => boolean;
  /** A message that must be written whatever the room (a give-back): counted against it. */
  charge: (length: number) => void;
}

type Verbs = Pick<SyncQueueStore, "restore" | "drop" | "flush" | "flushAll" | "sweepExpired">;

export function wholeQueueVerbs(c: VerbState): Verbs {
  const { st, guard, tx, queues, byId, heads, listing, changed, unfolded, sums, queueFor, emptied } = c;
  return {
  restore: (name, m, now) =>
    guard(() => {
      tx();
      const fresh = !queues.has(name);
      const q = queueFor(name);
      // Its id may lie in the head rows taken in this batch and not yet deleted: delete those
      // first, and drop the read-ahead, which the message now precedes.
      heads.forget(q);
      c.charge(m.body.length);
      st.insert.run(m.id, q.id, m.flags, now, m.expires, m.body);
      q.items++;
      sums.items++;
      q.bytes += m.body.length;
      if (fresh) q.total++;
      else q.fetched--;
    }),

  drop: (name) =>
    guard(() => {
      const q = queues.get(name);
      if (q === undefined) return false;
      tx();
      heads.dropMessages(q);
      st.deleteQueueMessages.run(q.id);
      st.deleteQueueDelayed.run(q.id);
      st.deleteQueue.run(q.id);
      emptied(q);
      queues.delete(name);
      byId.delete(q.id);
      listing.removed(q);
      changed.delete(q);
      unfolded.delete(q);
      return true;
    }),

  flush: (name) =>
    guard(() => {
      const q = queues.get(name);
      if (q === undefined || q.items === 0) return;
      tx();
      heads.dropMessages(q);
      st.deleteQueueMessages.run(q.id);
      st.deleteQueueDelayed.run(q.id);
      emptied(q);
      heads.forget(q);
      changed.add(q);
    }),

  flushAll: () =>
    guard(() => {
      tx();
      heads.dropAll();
      st.deleteAllMessages.run();
      st.deleteAllDelayed.run();
      for (const q of queues.values()) {
        if (q.items === 0) continue;
        emptied(q);
        heads.forget(q);
        changed.add(q);
      }
    }),

  sweepExpired: (now, limit) =>
    guard(() => {
      // Between batches nothing is pending or taken, so the file alone says whether anything is
      // due. Opening a transaction for nothing would leave the store dirty, and maintain(),
      // which runs only when it is not, would never run (no fold, no vacuum).
      if (!c.inTx() && st.due.values(now).length === 0) return 0;
      tx();
      heads.materializeAll();
      heads.deleteAllTakenRows(); // the sweep must not find, and count again, what was taken
      const rows = st.sweep.values(now, limit) as [number, number][];
      for (const [qid, bytes] of rows) {
        const q = byId.get(qid);
        if (q === undefined) continue;
        q.items--;
        sums.items--;
        q.bytes -= bytes;
        heads.forget(q);
        changed.add(q);
      }
      c.expired(rows.length);
      return rows.length;
    }),
  };
}

export interface FeatureState {
  guard: <T>(fn: () => T) => T;
  dead: ReturnType<typeof createSqliteDead>;
  dedup: ReturnType<typeof createSqliteDedup>;
  delays: ReturnType<typeof createSqliteDelays>;
  queues: Map<string, Queue>;
  /** Counts a set (plain or delayed) into its queue, refusing it if the disk may not take it. */
  admit: (name: string, body: Uint8Array, now: number) => Queue;
  /** Returns q's open message to its place; false if it was not open. */
  releaseNow: (q: Queue, id: number) => boolean;
  nextId: () => number;
}

/** The verbs of dead letters, idempotent sets and delays (sqlite-dead/dedup/delays.ts). */
export function featureVerbs(c: FeatureState): Pick<SyncQueueStore, "deadLetters" | "dedup" | "delays"> {
  const { guard, dead, dedup, delays, queues, admit, releaseNow, nextId } = c;
  return {
  deadLetters: {
    deliveries: (name, id) => guard(() => dead.deliveries(name, id)),
    moveOpen: (name, id, target, now) => guard(() => dead.moveOpen(name, id, target, now)),
    redrive: (from, to, now) => guard(() => dead.redrive(from, to, now)),
  },

  dedup: {
    seen: (name, token, now) => guard(() => dedup.seen(name, token, now)),
    remember: (name, token, until) => guard(() => dedup.remember(name, token, until)),
    sweep: (now, limit) => guard(() => dedup.sweep(now, limit)),
  },

  delays: {
    enqueue: (name, flags, body, expiresAt, now, dueAt) =>
      guard(() => {
        if (dueAt <= now) throw new Error("a delayed message must be due later than now");
        const q = admit(name, body, now);
        const id = nextId();
        delays.hold(q, id, flags, body, expiresAt, now, dueAt);
        return id;
      }),
    release: (name, id, dueAt, now) =>
      guard(() => {
        const q = queues.get(name);
        if (q === undefined) return false;
        if (dueAt <= now) return releaseNow(q, id);
        return delays.delayOpen(q, id, dueAt);
      }),
    // One look at the index when nothing is due, and no transaction (see sweepExpired).
    promoteDue: (now, limit) => guard(() => delays.promoteDue(now, limit)),
  },
  };
}
