/**
 * The queue features on the Postgres store (issue 12): delayed delivery, idempotent sets, dead
 * letters and redrive, with the same verbs as SQLite's (store.ts Delays, Dedup, DeadLetters).
 * The statements are in postgres-features-sql.ts; the schema (version 2) in postgres-schema.ts.
 *
 * Delays. A delayed set, or `abort/delay=`, writes the message to mcq_delayed with its due time on
 * Postgres's clock. Once due it moves to mcq_messages under a new id, so it takes its place at the
 * tail by due time, then arrival. The move (promote) is one statement that also counts it out of
 * `delayed` and notifies its queue, so gets waiting on any node look again. Every node keeps one
 * timer, for the earliest due time it knows of: the statement that writes a delayed message
 * notifies ` due <t>` at commit, and each node's timer follows the earliest t (Postgres's clock,
 * turned into this node's by the offset measured at the last reading). No poll per waiter: a
 * waiting get is woken by the promote's notification, within a few ms of the due time.
 *
 * Idempotent sets. The token is written in the set's own statement: INSERT … ON CONFLICT DO
 * UPDATE … WHERE the old window ended. A live token (committed by any node, or in flight on
 * another node, whose commit Postgres waits for) means the row is not stored, and the set still
 * answers STORED. Within one batch a token seen earlier is caught here, without a round trip.
 * Fanout copies of a set with a token depend on its token, in the same statement.
 *
 * Dead letters. An open counts a delivery (postgres-sql.ts open); the server decides at an abort,
 * disconnect or lease expiry (queue-limits.ts) and moveOpen moves the message in the batch of
 * that abort, DELETE and INSERT in one statement. A node that dies holding messages open: the
 * node that reaps it moves those opened max_deliveries times, one statement per reap (reap()).
 *
 * Counters (delayed, deduplicated, dead_lettered) are columns of mcq_counters, per node and summed
 * when read, like the others: exact over nodes and persistent. A batch is sent whole at commit,
 * its counter upsert before any statement answers (postgres-batches.ts): a count only a statement
 * knows (a set turned away, a move or an abort/delay that found its row, a redrive) is counted by
 * that statement itself, and its answer brings only this node's view along.
 */
import type { SQL } from "bun";
import { createDiscard, type DiscardOp } from "./postgres-discard";
import { featureStatements, type FeatureInsert } from "./postgres-features-sql";
import { zero, type Delta, type Statements } from "./postgres-sql";
import type { Op, Tx } from "./postgres-send";
import type { View } from "./postgres-view";
import type { DeadLetters, Dedup, Delays, Maybe } from "./store";

export type FeatureOp =
  | ({ k: "insert" } & FeatureInsert)
  | { k: "later"; queue: string; id: number; delay: number; bytes: number }
  | { k: "move"; queue: string; id: number; target: string; bytes: number; created: number }
  | { k: "redrive"; from: string; to: string; now: number; ok: (n: number) => void; fail: (e: unknown) => void }
  | DiscardOp
  /** A batch whose only change is a count (postgres.ts countFeature): sent, as a batch without ops is not. */
  | { k: "counted" };

/** Where a message opened `deliveries` times goes when it comes back: its dead-letter queue, or null. */
export type DeadLetterPolicy = (queue: string, deliveries: number) => string | null;

export interface FeatureDeps {
  schema: string;
  channel: string;
  node: number;
  st: Statements;
  view: View;
  tx(): Tx;
  op(o: Op): void;
  /** Counts in the view and the batch; `counted`: the op's own statement counts it in Postgres (postgres.ts). */
  change(tx: Tx, queue: string, d: Partial<Delta>, created?: number, counted?: boolean): void;
  held: Map<number, { queue: string; bytes: number; deliveries?: number }>;
  hold(tx: Tx, id: number, h: { queue: string; bytes: number; deliveries?: number } | null): void;
  /**
   * Runs `fn` between batches on the store's connection (postgres-batches.ts background). No
   * transaction is open there between batches: each of its statements commits on its own.
   */
  background(fn: (c: SQL) => Promise<void>): void;
  closed(): boolean;
  log(level: "info" | "warn", message: string): void;
  deadLetter: DeadLetterPolicy | null;
}

/** Due messages moved per promote statement; more follow at once. */
const PROMOTE_BATCH = 1000;
/** How often (ms) a node reads the earliest due time again, in case a notice was missed. */
const RECHECK_MS = 5000;
/** How often (ms) tokens whose window ended are deleted (a live token is all that matters). */
const TOKEN_SWEEP_MS = 10_000;
/** Bun fires a longer timeout after 1 ms: a later due time (a 30-day delay) is armed again when it fires. */
const MAX_TIMER_MS = 2 ** 31 - 1;

export function createFeatures(d: FeatureDeps) {
  const fst = featureStatements(d.schema, d.channel);
  /** Tokens set in each batch not yet sent: a second set of one in the same batch is caught here. */
  const tokens = new WeakMap<Tx, Set<string>>();
  /** A set with a token just enqueued: its fanout copies (`<q>+…`) depend on its token. */
  let guard: { queue: string; token: string; children: Set<string> } | null = null;
  const feature = (f: FeatureOp) => d.op({ k: "feature", f });
  const discard = createDiscard({
    node: d.node, view: d.view, tx: d.tx, feature, change: (tx, q, delta) => d.change(tx, q, delta),
    parentToken: (queue) => (guard !== null && queue.startsWith(`${guard.queue}+`) && !guard.children.has(queue) ? guard : null),
  }, fst);

  // ---- the due timer: one per node, for the earliest due time it knows of ----
  /** Postgres's clock minus this node's, at the last reading. */
  let offset = 0;
  let nextDue = Infinity; // on Postgres's clock
  let timer: ReturnType<typeof setTimeout> | null = null;
  let lastCheck = 0;
  let lastSweep = Date.now();
  let promoting = false;

  function arm(due: number): void {
    if (d.closed() || due >= nextDue) return;
    nextDue = due;
    if (timer !== null) clearTimeout(timer);
    timer = setTimeout(fire, Math.min(MAX_TIMER_MS, Math.max(0, due - offset - Date.now())));
  }

  function fire(): void {
    timer = null;
    nextDue = Infinity;
    if (promoting || d.closed()) return;
    promoting = true;
    d.background(async (c) => {
      try {
        // A full batch moved: more may be due, go on at once.
        for (let moved = PROMOTE_BATCH; moved === PROMOTE_BATCH && !d.closed(); ) {
          moved = 0;
          for (const r of await fst.promote(c, PROMOTE_BATCH, d.node)) {
            moved += r.n;
            // Committed into this node's row already: the view follows now, not at the next refresh.
            if (d.view.has(r.queue)) d.view.add(r.queue, { ...zero(), delayed: -r.n });
          }
        }
        await readNext(c);
      } finally {
        promoting = false;
      }
    });
  }

  async function readNext(c: SQL): Promise<void> {
    const before = Date.now();
    const r = await fst.nextDue(c);
    lastCheck = Date.now();
    offset = r.now - (before + lastCheck) / 2;
    // Due already but not moved (locked by another node's promote): look again shortly.
    if (r.next !== null) arm(Math.max(r.next, r.now + (r.next <= r.now ? 5 : 0)));
  }

  const delays: Delays = {
    enqueue(queue, flags, body, expiresAt, now, dueAt) {
      insert(queue, flags, body, expiresAt, now, Math.max(1, dueAt - now), guarded(queue));
      return 0;
    },
    release(queue, id, dueAt, now) {
      const h = d.held.get(id);
      if (h === undefined || h.queue !== queue) return false;
      const tx = d.tx();
      d.hold(tx, id, null);
      feature({ k: "later", queue, id, delay: Math.max(1, dueAt - now), bytes: h.bytes });
      d.change(tx, queue, { open: -1, delayed: 1 }, 0, true); // the statement counts what it finds
      return true;
    },
    promoteDue() {
      // The timer does it (above); here only the safety net: a notice missed during a reconnect.
      if (Date.now() - lastCheck >= RECHECK_MS && !d.closed()) {
        lastCheck = Date.now();
        d.background(readNext);
      }
      return [];
    },
  };

  /** A set with a delay or a token: one statement for the batch's (postgres-features-sql.ts insert). */
  function insert(queue: string, flags: number, body: Uint8Array, expires: number, created: number, delay: number,
    g: { queue: string; token: string } | null): void {
    feature({
      k: "insert", queue, flags, created, expires, body: Buffer.from(body), delay,
      token: g?.token ?? null, tokenQueue: g?.queue ?? null, own: false, window: 0,
    });
    d.change(d.tx(), queue, { total: 1, items: 1, bytes: body.length, delayed: delay > 0 ? 1 : 0 }, created);
    if (delay === 0) d.tx().wake.add(queue);
  }

  /** The token a fanout copy into `queue` depends on, if it is one; else the guard ends. */
  function guarded(queue: string): { queue: string; token: string } | null {
    const g = guard;
    if (g === null) return null;
    if (queue.startsWith(`${g.queue}+`) && !g.children.has(queue)) {
      g.children.add(queue);
      return g;
    }
    guard = null;
    return null;
  }

  const dedup: Dedup = {
    seen(queue, token) {
      guard = null;
      const tx = d.tx();
      if (!tokens.get(tx)?.has(`${queue}\0${token}`)) return false; // Postgres decides (insert above)
      d.change(tx, queue, { deduplicated: 1 });
      return true;
    },
    remember(queue, token, until) {
      const tx = d.tx();
      const last = tx.ops[tx.ops.length - 1];
      // The set just enqueued (commands.ts calls this right after): it now carries the token.
      let f: Extract<FeatureOp, { k: "insert" }>;
      if (last?.k === "insert" && last.queue === queue) {
        f = { ...last, k: "insert", delay: 0, token: null, tokenQueue: null, own: false, window: 0 };
        tx.ops[tx.ops.length - 1] = { k: "feature", f };
      } else if (last?.k === "feature" && last.f.k === "insert" && last.f.queue === queue) f = last.f;
      else throw new Error(`dedup.remember(${queue}) without its set`);
      // A discard_old just before it drops nothing if the token turns the set away.
      const before = tx.ops[tx.ops.length - 2];
      if (before?.k === "feature" && before.f.k === "discard" && before.f.queue === queue) {
        before.f.token = token;
        before.f.tokenQueue = queue;
      }
      f.token = token;
      f.tokenQueue = queue;
      f.own = true;
      f.window = Math.max(1, until - f.created);
      let set = tokens.get(tx);
      if (set === undefined) tokens.set(tx, (set = new Set()));
      set.add(`${queue}\0${token}`);
      // Until settled(): the fanout copies of this very set, which commands.ts makes next.
      guard = { queue, token, children: new Set() };
    },
    settled() {
      guard = null;
    },
    sweep() {
      if (Date.now() - lastSweep >= TOKEN_SWEEP_MS && !d.closed()) {
        lastSweep = Date.now();
        d.background(async (c) => void (await fst.sweepTokens(c, 10_000)));
      }
      return 0; // counted nowhere: an ended token is as good as none
    },
  };

  const deadLetters: DeadLetters = {
    deliveries(queue, id) {
      const h = d.held.get(id);
      return h === undefined || h.queue !== queue ? -1 : h.deliveries ?? 1;
    },
    moveOpen(queue, id, target, now) {
      guard = null;
      const h = d.held.get(id);
      if (h === undefined || h.queue !== queue) return false;
      const tx = d.tx();
      d.hold(tx, id, null);
      feature({ k: "move", queue, id, target, bytes: h.bytes, created: now });
      // The statement counts what it finds (postgres-features-sql.ts move).
      d.change(tx, queue, { items: -1, bytes: -h.bytes, open: -1, fetched: 1, deadLettered: 1 }, 0, true);
      d.change(tx, target, { total: 1, items: 1, bytes: h.bytes }, now, true);
      tx.wake.add(target);
      return true;
    },
    redrive(from, to, now): Maybe<number> {
      guard = null;
      // Postgres decides what `from` holds: this node's view may not have seen another node's sets yet.
      // Answered when its statement is, once the batch is sent at commit; it counts what it moved.
      if (from === to) return 0;
      const n = new Promise<number>((ok, fail) => feature({ k: "redrive", from, to, now, ok, fail }));
      d.tx().wake.add(to); // NOTIFY is sent with the batch, before the count is known
      return n;
    },
  };

  /**
   * Runs a run of like feature ops of one batch (postgres-send.ts). Every statement is put on the
   * connection before this returns (the batch's COMMIT goes right behind); what only a statement
   * knows, it counts in Postgres itself, and its answer only brings the view along.
   */
  function statement(tx: Tx, c: SQL, ops: FeatureOp[]): Promise<void> {
    const op = ops[0]!;
    const all = (each: Promise<void>[]) => Promise.all(each).then(() => {});
    switch (op.k) {
      case "insert": {
        const rows = ops as Extract<FeatureOp, { k: "insert" }>[];
        return fst.insert(c, rows, d.node).then(({ turnedAway, due }) => {
          if (tx.undone) return;
          // This node's timer at once; the others' at the commit's notice (and this one's again).
          if (due !== null) arm(due);
          for (const i of turnedAway) {
            // Its token was live: nothing stored. The statement took back what the set counted.
            const r = rows[i - 1]!;
            d.change(tx, r.queue, { total: -1, items: -1, bytes: -r.body.length, delayed: r.delay > 0 ? -1 : 0, deduplicated: r.own ? 1 : 0 });
          }
        });
      }
      case "later": {
        const rows = ops as Extract<FeatureOp, { k: "later" }>[];
        return fst.later(c, rows.map((o) => o.id), rows.map((o) => o.delay), d.node).then(({ found, due }) => {
          if (due !== null && !tx.undone) arm(due);
          for (const o of rows) if (!found.has(o.id) && !tx.undone && d.view.has(o.queue)) d.change(tx, o.queue, { open: 1, delayed: -1 });
        });
      }
      case "move": {
        const rows = ops as Extract<FeatureOp, { k: "move" }>[];
        return fst.move(c, rows.map((o) => o.id), rows.map((o) => o.target), [d.node], d.node).then((moved) => {
          const found = new Set(moved.map((r) => r.id));
          for (const o of rows) {
            // Not found: a flush or drop elsewhere deleted it; the view counted it, the statement did not.
            if (found.has(o.id) || tx.undone) continue;
            if (d.view.has(o.queue)) d.change(tx, o.queue, { items: 1, bytes: o.bytes, open: 1, fetched: -1, deadLettered: -1 });
            d.change(tx, o.target, { total: -1, items: -1, bytes: -o.bytes });
          }
        });
      }
      case "redrive":
        return all(
          (ops as Extract<FeatureOp, { k: "redrive" }>[]).map((o) =>
            fst.redrive(c, o.from, o.to, d.node).then(
              (r) => {
                if (r.n > 0 && !tx.undone) {
                  d.change(tx, o.from, { items: -r.n, bytes: -r.bytes, fetched: r.n });
                  d.change(tx, o.to, { total: r.n, items: r.n, bytes: r.bytes }, o.now);
                }
                o.ok(r.n);
              },
              (e) => {
                o.fail(e);
                throw e;
              },
            ),
          ),
        );
      case "counted":
        return Promise.resolve();
      case "discard":
        return discard.statement(tx, c, ops as DiscardOp[]);
    }
  }

  /**
   * Returns the open messages of dead nodes (postgres-sql.ts reap), after moving to their
   * dead-letter queues those opened max_deliveries times. No BEGIN is awaited on the store's one
   * connection (a batch sent meanwhile would land inside it): each step commits on its own, and
   * each is safe if the reaper is killed right after it:
   * - deadNodes, openOf: reads only.
   * - move: one statement (DELETE and INSERT, counted in it): each moved message is in exactly one
   *   queue, and the dead nodes' rows are still there, so the next reaper finds the rest.
   * - notify: a wake-up only; a waiter missing it looks again at its next notice or timeout.
   * - st.reap: one statement (nodes' rows deleted, their messages freed, counters folded).
   * Returns how many came back or moved.
   */
  async function reap(c: SQL, leaseS: number, only: number | null = null, witnessedS = leaseS): Promise<number> {
    if (d.deadLetter === null) return d.st.reap(c, leaseS, only, witnessedS);
    const dead = await fst.deadNodes(c, leaseS, only, witnessedS);
    let moved = 0;
    if (dead.length > 0) {
      const moves: { id: number; queue: string; target: string }[] = [];
      for (const m of await fst.openOf(c, dead)) {
        const target = d.deadLetter(m.queue, m.deliveries);
        if (target !== null && target !== m.queue) moves.push({ id: m.id, queue: m.queue, target });
      }
      if (moves.length > 0) {
        // Into this node's counter rows, like any change it makes; the opens were the dead node's.
        moved = (await fst.move(c, moves.map((m) => m.id), moves.map((m) => m.target), dead, d.node)).length;
        if (moved > 0) await fst.notify(c, [...new Set(moves.map((m) => m.target))]);
      }
    }
    const back = await d.st.reap(c, leaseS, only, witnessedS);
    if (moved > 0) d.log("info", `Postgres: ${moved} open messages of dead nodes moved to their dead-letter queues`);
    return back + moved;
  }

  return {
    delays,
    dedup,
    deadLetters,
    statement,
    reap,
    discardOld: discard.discardOld,
    /** Sets of a plain enqueue: a fanout copy of a set with a token goes through insert(). */
    enqueue(queue: string, flags: number, body: Uint8Array, expires: number, created: number): boolean {
      if (guard === null) return false;
      const g = guarded(queue);
      if (g === null) return false;
      insert(queue, flags, body, expires, created, 0, g);
      return true;
    },
    /** A notification's payload; true if it was the features' own (` due <t>`). */
    notice(payload: string): boolean {
      if (!payload.startsWith(" due ")) return false;
      arm(Number(payload.slice(5)));
      return true;
    },
    /** Reads the earliest due time (at start, and after a reconnection). */
    recheck(): void {
      if (!d.closed()) d.background(readNext);
    },
    stop(): void {
      if (timer !== null) clearTimeout(timer);
      timer = null;
    },
  };
}

export type Features = ReturnType<typeof createFeatures>;
