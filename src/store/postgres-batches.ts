/**
 * The Postgres store's batches on its one connection (postgres.ts keeps the connection and the
 * verbs). A batch is one transaction, sent whole when the turn commits: BEGIN, its
 * statements (postgres-send.ts), the counter upsert, NOTIFY and COMMIT, pipelined in one write,
 * so no transaction is open across event-loop turns: Postgres holds it for as long as it takes
 * to run those statements. The next batch is sent once its outcome is known (one in flight,
 * store.maxInFlight), so it sees every earlier one. A failure or the timeout fails the batch, and the
 * connection is replaced. Background work (heartbeats) and reading the counters again (refresh)
 * go on the same connection, between batches.
 */
import type { SQL } from "bun";
import type { Delta, Statements } from "./postgres-sql";
import type { Mode, Op, Tx } from "./postgres-send";
import type { View } from "./postgres-view";
import { createOutcomes, type OutcomeDeps } from "./postgres-resolve";
import { StoreError, type Message } from "./store";
import { within } from "../within";

export interface BatchDeps extends OutcomeDeps {
  node: number;
  channel: string;
  view: View;
  send(tx: Tx, c: SQL): Promise<void>;
  /** The session whose requests run now (store.actor), 0 for none. */
  actor(): number;
  /** The connection, walking the host list again if the last one was dropped. */
  connection(): Promise<SQL>;
  /** The connection now, or null once dropped. */
  client(): SQL | null;
  /** The server the connection writes to (postgres-sql.ts identity). */
  server(): string | null;
  closed(): boolean;
  /** Every node's counters, as read when the store opened. */
  sums: Sums;
}

type Sums = Awaited<ReturnType<Statements["totals"]>>;
export type Batches = ReturnType<typeof createBatches>;

/**
 * An error Postgres answered for a statement (severity ERROR): its transaction is rolled back for
 * certain. Anything else on a COMMIT (the connection closed, FATAL: the backend ended) leaves the
 * COMMIT's outcome unknown.
 */
const definite = (e: unknown) => (e as { severity?: string } | null)?.severity === "ERROR";

/**
 * The longest a batch may take to be answered: its timeout, then a COMMIT with no answer looked up
 * (postgres-resolve.ts, bounded by the timeout again), with room for a connection's own timeout
 * (3 s) in between.
 */
export const commitBound = (timeoutMs: number) => 2 * timeoutMs + 3000;

export function createBatches(d: BatchDeps) {
  const { st, view, reason } = d;
  let lastSums = d.sums;
  /** Batches since the last refresh read the sums: a refresh replays their changes. */
  let recent: Tx[] = [];
  let lastOutcome: Promise<void> = Promise.resolve();
  let background_: Promise<void> = Promise.resolve();
  let cur = newTx();
  let commitFailed = false;
  /** A connection being made: what is to be sent meanwhile waits for it, in order. */
  let connecting: Promise<SQL> | null = null;
  /** Batches whose COMMIT answered. */
  const answered = new WeakSet<Tx>();
  const outcome = createOutcomes(d, answered);
  function newTx(): Tx {
    let breakNow!: (e: StoreError) => void;
    const broken = new Promise<never>((_, fail) => (breakNow = fail));
    broken.catch(() => {});
    const tx: Tx = {
      ops: [], layers: [], takesBy: new Map(), counted: new Map(), failed: null, sentOn: null, undone: false, wake: new Set(), dropped: new Set(), deltas: new Map(),
      timer: null, refreshers: [], heldUndo: [], broken, breakNow, xact: null, resolution: null, pid: null, wroteNothing: false,
      server: null, taken: [], leased: [], unanswered: 0,
    };
    recent.push(tx);
    return tx;
  }

  /** Runs `fn` on the connection: now, or once it is made; in the order of the calls either way. */
  function onConnection<T>(fn: (c: SQL) => Promise<T>): Promise<T> {
    const c = d.client();
    if (c !== null && connecting === null) {
      try {
        return fn(c);
      } catch (e) {
        return Promise.reject(e);
      }
    }
    connecting ??= d.connection().finally(() => (connecting = null));
    return connecting.then(fn);
  }

  /** The batch's counter changes that no statement counts itself (see postgres-sql.ts upsert). */
  function uncounted(tx: Tx): Map<string, Delta> {
    if (tx.counted.size === 0) return tx.deltas;
    const out = new Map<string, Delta>();
    for (const [q, dl] of tx.deltas) {
      const c = tx.counted.get(q);
      const rest = { ...dl };
      if (c !== undefined) for (const k of Object.keys(rest) as (keyof Delta)[]) rest[k] -= c[k];
      if (Object.values(rest).some((v) => v !== 0)) out.set(q, rest);
    }
    return out;
  }

  /**
   * Puts the whole transaction on the connection, at once: nothing of it waits for an answer.
   * Resolves once COMMIT has answered; takes are answered as their statements are.
   */
  function sendTx(tx: Tx, c: SQL): Promise<void> {
    if (tx.failed !== null) return Promise.reject(tx.failed); // timed out waiting for a connection
    tx.sentOn = c;
    tx.server = d.server();
    // Tagged, not c.unsafe("BEGIN"): Bun.SQL sends a query without parameters by the simple
    // protocol, after every earlier answer and alone; tagged it is prepared and pipelined, so the
    // whole transaction leaves in one write (measured with strace: three writes before, one after).
    const parts: Promise<unknown>[] = [c`BEGIN`.execute()];
    parts.push(st.pid(c).then((pid) => void (tx.pid = pid)));
    parts.push(d.send(tx, c));
    // Sent before any take has answered: what a take changes, its statement counts itself.
    const deltas = uncounted(tx);
    if (deltas.size > 0) parts.push(st.count(c, d.node, deltas));
    if (tx.wake.size > 0) parts.push(st.notify(c, d.channel, [...tx.wake]));
    // Last before COMMIT, so that a batch that wrote nothing is known as such (postgres-sql.ts xact).
    parts.push(st.xact(c).then(({ xid, pid }) => void (xid === null ? (tx.wroteNothing = true) : (tx.xact = { xid, pid }))));
    const commit = c`COMMIT`.execute();
    commit.then(() => answered.add(tx), () => {}); // awaited below, unless an earlier statement failed first
    outcome.watch(tx, [...parts, commit]);
    // Counters read right after this COMMIT, before the next batch, include it and none after.
    const next = recent[recent.indexOf(tx) + 1];
    const sums = tx.refreshers.length > 0 ? st.totals(c) : null;
    sums?.catch(() => {});
    return (async () => {
      // A part without its answer: the backend ended before it, so before its COMMIT.
      for (const r of await Promise.allSettled(parts)) if (r.status === "rejected") throw outcome.notRun(tx) ?? r.reason;
      // No answer to a COMMIT that was sent does not mean that it failed: find out (postgres-resolve.ts).
      const r = await commit.catch((e) => {
        if (definite(e)) throw e;
        return outcome.settle(tx, e).then(() => ({ command: "COMMIT" }));
      });
      if (r.command !== "COMMIT") throw new StoreError(`Postgres: the transaction was rolled back`);
      if (sums !== null) {
        const rows = await sums.catch(() => null);
        if (rows !== null && next !== undefined && !tx.undone) applySums(rows, next);
      }
    })();
  }

  /**
   * A batch must be done within the timeout: a Postgres that stopped answering is not waited for.
   * Once its statements may all have run, its COMMIT may be under way (a deferred trigger, a
   * synchronous standby that lags) and land after all: the batch is resolved (postgres-resolve.ts), not
   * failed, and its outcome comes through sendTx, whose COMMIT then fails as its backend is ended.
   */
  function startTimer(tx: Tx): void {
    // Decided one I/O turn after it fires: answers that came meanwhile are read first. mcq paused
    // past the timeout (SIGSTOP, a stalled VM) finds its timers due and its answers unread at once;
    // a COMMIT that answered is not looked up, nor its batch failed while its replies go out.
    tx.timer = setTimeout(() => setTimeout(() => {
      if (answered.has(tx)) return; // sendTx finishes it
      const late = new StoreError(`Postgres: no answer within ${d.timeoutMs} ms`);
      if (tx.sentOn === null || (tx.xact === null && !tx.wroteNothing && tx.pid === null)) {
        failTx(tx, late);
        d.replaceConnection(tx.sentOn);
      } else outcome.settle(tx, late).catch((e) => answered.has(tx) || failTx(tx, e));
    }, 1), d.timeoutMs);
  }

  /**
   * A statement of the batch failed in Postgres: its transaction is aborted, so the batch is failed
   * now, before its takes are rejected (postgres-send.ts), and its connection is dropped now: a
   * batch sent after the undo (batch.ts lets the next one go once this one is undone) goes on a
   * new connection, not behind this one's remains, where dropping it later would leave its own
   * COMMIT's outcome unknown.
   */
  function statementFailed(tx: Tx, e: unknown): void {
    if (tx.failed !== null) return;
    failTx(tx, outcome.notRun(tx) ?? e);
    d.replaceConnection(tx.sentOn);
  }

  function failTx(tx: Tx, e: unknown): void {
    if (tx.failed !== null) return;
    tx.failed = reason(e);
    tx.breakNow(tx.failed);
    tx.refreshers.splice(0).forEach((ok) => ok());
    // Takes answered already ignore this (a promise settles once): their batch's failure cuts their replies.
    for (const op of tx.ops) {
      if (op.k === "take") op.t.fail(tx.failed);
      else if (op.k === "feature" && op.f.k === "redrive") op.f.fail(tx.failed);
      else if (op.k === "drop") op.fail(tx.failed);
    }
  }

  function take(mode: Mode, queue: string, now: number): Promise<Message | null> {
    return new Promise<Message | null>((ok, fail) => add({ k: "take", t: { mode, queue, now, ok, fail } }));
  }

  function op(o: Op): void {
    if (d.closed()) throw new StoreError("Postgres: store closed");
    add(o);
  }

  /** Adds an op to the open batch, in its session's layer (Tx.layers). */
  function add(o: Op): void {
    const actor = d.actor();
    const layer = cur.takesBy.get(actor) ?? 0;
    if (o.k === "take") cur.takesBy.set(actor, layer + 1);
    cur.ops.push(o);
    cur.layers.push(layer);
  }

  /**
   * Work between batches is bounded too: a connection that stopped answering (a partition without
   * a reset) is not waited on until TCP gives up (review 8 R3), with a stats request or a clean
   * stop waiting behind it.
   */
  const bounded = <T>(work: Promise<T>, ms: number) => within(work, ms, () => new StoreError(`Postgres: no answer within ${ms} ms`));

  /** A background failure was said, and none has succeeded since. */
  let saidBackground = false;

  /**
   * Runs `fn` between batches, in the connection's order; a failure drops the connection. It may
   * wait for a batch sent before it, which may take up to commitBound: only past that is the
   * connection given up on (not a batch's, which its own timer settles). During an outage every
   * heartbeat fails: the first failure is said, the next ones not until work succeeds again.
   */
  function background(fn: (c: SQL) => Promise<void>): void {
    let on: SQL | null = null;
    background_ = onConnection((c) => bounded(fn((on = c)), commitBound(d.timeoutMs))).then(
      () => void (saidBackground = false),
      (e) => {
        const m = reason(e).message;
        if (!saidBackground) d.log("warn", m.startsWith("Postgres") ? m : `Postgres: ${m}`);
        saidBackground = true;
        d.replaceConnection(on); // not a connection made since, which may carry a batch
      },
    );
  }

  /** Reads the sums again (between batches, in the connection's order) and replays later changes. */
  async function refresh(): Promise<void> {
    if (cur.ops.length > 0) {
      // The open batch has work: the sums are read right after its COMMIT (see sendTx).
      return new Promise<void>((ok) => cur.refreshers.push(ok));
    }
    const before = cur; // not sent: it goes after this read, which then does not include it
    // Within the timeout, or its caller goes on without (a stats answers from the view); the
    // connection is left to the batches' timers, which know whether one is under way on it.
    applySums(await onConnection((c) => bounded(st.totals(c), d.timeoutMs)), before);
  }

  /** The view becomes `rows` plus the changes of `first` and every batch after it. */
  function applySums(rows: Sums, first: Tx): void {
    lastSums = rows;
    recent = recent.slice(Math.max(0, recent.indexOf(first)));
    view.reset(lastSums, recent.filter((t) => !t.undone));
  }

  function commit(): void | Promise<void> {
    const tx = cur;
    cur = newTx();
    if (tx.ops.length === 0) return; // counter changes alone need no statement (none today)
    const previous = lastOutcome;
    startTimer(tx);
    const sent = onConnection((c) => sendTx(tx, c));
    const done = Promise.race([
      tx.broken,
      sent.then(async () => {
        await previous; // a batch is durable only after every earlier one
        if (tx.failed !== null) throw tx.failed; // timed out meanwhile: already reported as failed
        tx.refreshers.splice(0).forEach((ok) => ok());
      }),
    ]).then(
      () => {
        if (tx.timer !== null) clearTimeout(tx.timer);
        commitFailed = false;
        tx.taken = []; // kept only for an outcome that stays unknown: not held while `recent` holds the batch
        tx.leased = [];
      },
      (e) => {
        if (tx.timer !== null) clearTimeout(tx.timer);
        failTx(tx, e);
        commitFailed = true;
        d.replaceConnection(tx.sentOn); // its transaction is aborted or its state unknown: start afresh
        throw tx.failed;
      },
    );
    lastOutcome = done; // the next batch fails if this one does
    return done;
  }

  function rollback(): void {
    // The open batch (never sent: nothing to roll back in Postgres), and every one in flight that
    // failed or follows one that failed.
    let undo = false;
    const undone: Tx[] = [];
    for (const tx of recent) {
      if (tx.failed !== null && !tx.undone) undo = true;
      if ((undo || tx === cur) && !tx.undone) {
        if (tx.failed === null) failTx(tx, new StoreError("Postgres: batch undone"));
        tx.undone = true;
        undone.push(tx);
      }
    }
    for (const tx of undone.reverse()) for (const fn of tx.heldUndo.splice(0).reverse()) fn();
    cur = newTx();
    // Batches from here on do not inherit the failure: those it concerned are undone.
    lastOutcome = Promise.resolve();
    view.reset(lastSums, recent.filter((t) => !t.undone));
  }

  return {
    /** The open batch. */
    current: () => cur,
    take,
    op,
    failed: statementFailed,
    background,
    refresh,
    commit,
    rollback,
    dirty: () => cur.ops.length > 0 || cur.deltas.size > 0 || cur.dropped.size > 0,
    /** The last commit failed: new messages are refused until one succeeds. */
    failing: () => commitFailed,
    /** Resolves once the last batch and the background work are done. */
    settled: async () => {
      await lastOutcome.catch(() => {}); // the last batch is committed (or failed) first
      await background_;
    },
  };
}
