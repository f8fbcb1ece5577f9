/**
 * The group-commit turn. Requests run as their bytes arrive and join the open batch; once per
 * event-loop turn, every connection with work left runs (fairly: at most REQUESTS_PER_TURN
 * requests, or maxUnsent bytes of output, each), housekeeping tasks run, the batch commits once,
 * and each connection's committed replies leave in one write. Any failure, in a request or in
 * housekeeping, goes through batch.fail(): the one failure path.
 */
import { execute, resumeSession } from "./commands";
import { connBytes } from "./config";
import { drainUnsent, flushHeld, heldBytes, undelivered, updateReading, type Conn } from "./conn";
import type { Context } from "./context";
import { endSession } from "./give-back";
import type { Request } from "./protocol/types";
import { observeCommit } from "./stats";

/** Requests one connection may run per turn before others get theirs. */
const REQUESTS_PER_TURN = 1024;
/**
 * Batches committing at once (docs/design.md): while one waits on a networked store, the next
 * runs. A synchronous store (SQLite) is durable before its turn ends and never has one in flight.
 * Past the limit, the open batch waits (in memory: nothing of it is sent) until one lands.
 */
const MAX_IN_FLIGHT = 2;
/**
 * A store that answers at commit (Postgres) pays one COMMIT, one fsync, per batch whatever its
 * size. The connections a landing answered send their next requests within a round trip: the open
 * batch waits for them at most GATHER_MS, in memory (nothing of it is sent, no transaction is
 * open), so one commit carries them all rather than the first few.
 */
const GATHER_MS = 2;
/**
 * The open batch's bound: past this many requests, or bytes of set bodies, no more request runs
 * until it commits; the connections wait in `runnable`, and their reading pauses once their input
 * holds a request (docs/design.md, "Memory"). While a batch is in flight the open one gathers the
 * requests that arrive: without a bound a flood of pipelined sets made it grow without end (a
 * quarter of a million sets, GBs of memory, then longer than the store's 5 s timeout to commit).
 * At the bound a batch commits well within it (Postgres inserts 10k rows of 1 KiB in 0.1-0.3 s on
 * a loaded 2-core machine), its memory stays in the tens of MB (the Postgres store keeps about
 * 4.5 KB per 1 KiB set), and no benchmark's batch comes near it (50 connections x 16: 800).
 */
export const BATCH_MAX_REQUESTS = 10_000;
export const BATCH_MAX_BYTES = 16 * 1024 * 1024;
export interface Turns {
  /** Runs what the connection has read (from its data event) or queues it for the turn. */
  run(conn: Conn): void;
  /** A connection can go on (its get ended, or it may take requests again). */
  resume(conn: Conn): void;
  /** Housekeeping work to run inside the next turn, in the batch. */
  task(fn: () => void): void;
  /** Its output drained: it may take requests again. */
  drained(conn: Conn): void;
  /** The socket closed: end the session inside the batch. */
  closed(conn: Conn): void;
  /** Runs one turn now (used to answer what was read when stopping). */
  turnNow(): void;
  /** Whether the connection owes nothing: no request runnable, nothing held or unsent. */
  idle(conn: Conn): boolean;
  /** Called after each commit with nothing in the batch: the store may do its upkeep. */
  afterCommit: (() => void) | null;
}

export function createTurns(ctx: Context, describe: (req: Request) => string, lost: (conn: Conn) => void): Turns {
  const { store, stats, config, log, batch } = ctx;
  let runnable = new Set<Conn>();
  let current: Set<Conn> | null = null; // the connections of the turn in progress
  let touched = new Set<Conn>(); // connections with replies to release after the commit
  let tasks: (() => void)[] = [];
  let scheduled = false;
  /** Connections the last landing answered that have not sent a request since, and when it landed. */
  const expecting = new Set<Conn>();
  let landedAt = 0;
  let gatherTimer: ReturnType<typeof setTimeout> | null = null;
  const inputLimit = config.maxLine + config.maxBody + 2;
  const outputLimit = Math.min(config.maxUnsent, connBytes(config));
  /** Connections with output not yet sent, and those held back for the budget (--max-conn-memory). */
  const sending = new Set<Conn>();
  /** Reply bytes made since the last release, not yet in anyone's unsent count. */
  let heldOut = 0;
  const overBudget = new Set<Conn>();
  /** Requests run into the open batch, the bytes of their bodies, and that batch's number. */
  let batchRequests = 0;
  let batchBytes = 0;
  let batchEpoch = 0;
  /** A connection waits because the open batch was at its bound: the next turn runs it first. */
  let heldBack = false;

  /**
   * Counts what the connection buffers, and holds connections back while the server is over its
   * budget. Only output can be held back: it grows by running requests, and shrinks as clients
   * read. Input is never held back for the budget (a partial request only completes by being
   * read, and one request is all a connection may buffer); so while over the budget, every
   * connection with output still unsent is neither read nor run, and the others go on.
   */
  function account(conn: Conn): void {
    if (conn.state !== "closed") {
      const now = conn.framer.pending() + conn.unsentBytes;
      if (now === conn.buffered && overBudget.size === 0 && stats.bufferedBytes <= config.maxConnMemory) {
        updateReading(conn, inputLimit); // the common case: nothing to count
        return;
      }
      stats.bufferedBytes += now - conn.buffered;
      conn.buffered = now;
      if (conn.unsentBytes > 0) sending.add(conn);
      else sending.delete(conn);
    }
    const over = stats.bufferedBytes > config.maxConnMemory;
    for (const c of over ? sending : overBudget) {
      const hold = over && c.unsentBytes > 0;
      if (hold === c.overBudget) continue;
      c.overBudget = hold;
      if (hold) overBudget.add(c);
      else {
        overBudget.delete(c);
        resume(c); // it may run its requests again
      }
      updateReading(c, inputLimit);
    }
    if (conn.state !== "closed") updateReading(conn, inputLimit);
    stats.overBudget = overBudget.size;
  }

  /** Whether the open batch is at its bound: no request joins it until it commits. */
  function batchFull(): boolean {
    if (batchEpoch !== batch.epoch()) {
      // A commit or a failure began a new batch.
      batchEpoch = batch.epoch();
      batchRequests = 0;
      batchBytes = 0;
    }
    return batchRequests >= BATCH_MAX_REQUESTS || batchBytes >= BATCH_MAX_BYTES;
  }

  /** Whether the store has as many batches in flight as it takes: the open one cannot be sent. */
  const atInFlightLimit = () => batch.inFlight() >= (store.maxInFlight ?? MAX_IN_FLIGHT);

  function schedule(): void {
    if (scheduled) return;
    scheduled = true;
    setImmediate(turn);
  }

  /**
   * Runs the connection's buffered requests until it waits, closes, or has had its share; true
   * if it ran (and counted its bytes).
   */
  function runConn(conn: Conn): boolean {
    if (store.answersAtCommit !== true) return runRequests(conn);
    // A closing connection's deferred get was answered: its replies leave with the next commit.
    if (conn.state === "closing" && conn.session.held.length > 0) touched.add(conn);
    store.actor = conn.session.id; // the store keeps this session's ops in order
    try {
      return runRequests(conn);
    } finally {
      store.actor = 0;
    }
  }

  function runRequests(conn: Conn): boolean {
    if ((conn.state !== "reading" && conn.state !== "waiting") || conn.overBudget) return false;
    const s = conn.session;
    touched.add(conn);
    if (s.job !== null || s.get !== null) {
      const outcome = resumeSession(ctx, s);
      if (outcome !== "next") {
        conn.state = outcome === "close" ? "closing" : "waiting";
        account(conn);
        return true;
      }
    }
    conn.state = "reading";
    let out = conn.unsentBytes + heldBytes(conn);
    let full = batchFull();
    for (let n = 0; ; n++) {
      // Its share of the turn, its own output bound, (past the server's budget) one reply, or the batch's bound.
      const over = out > 0 && stats.bufferedBytes + heldOut > config.maxConnMemory;
      if (n === REQUESTS_PER_TURN || out >= outputLimit || over || full) {
        runnable.add(conn);
        if (full) heldBack = true;
        break;
      }
      const req = conn.framer.next();
      if (req === null) break;
      batchRequests++;
      if (req.kind === "set") batchBytes += req.data.length;
      full = batchRequests >= BATCH_MAX_REQUESTS || batchBytes >= BATCH_MAX_BYTES;
      if (expecting.size > 0) expecting.delete(conn);
      if (log.verbosity >= 2) log.trace(`<${s.id} ${describe(req)}`);
      const before = s.held.length;
      const outcome = execute(ctx, s, req);
      for (let i = before; i < s.held.length; i++) {
        out += s.held[i]!.size;
        heldOut += s.held[i]!.size;
      }
      if (outcome === "close") conn.state = "closing";
      if (outcome === "wait") conn.state = "waiting";
      if (outcome !== "next") break;
    }
    account(conn);
    return true;
  }

  function turn(force = false): void {
    scheduled = false;
    // The landing of a batch schedules the turn again.
    if (atInFlightLimit()) return;
    runTasks();
    const run = runnable;
    runnable = new Set();
    current = run;
    heldBack = false;
    for (const conn of run) {
      if (batchFull()) break;
      run.delete(conn); // a connection resumed during the turn is added again, and runs again
      runConn(conn);
    }
    current = null;
    // Those the bound left out go first next turn, before those that had their share.
    if (run.size > 0) {
      runnable = new Set([...run, ...runnable]);
      heldBack = true;
    }
    if (runnable.size > 0) schedule();
    // The answered connections' requests, or the timer, run the turn again; a full batch goes now.
    if (!force && !batchFull() && gathering()) return;
    const release = touched;
    touched = new Set();
    const started = store.dirty() ? performance.now() : -1;
    const done = batch.commit();
    if (started >= 0) observeCommit(stats, (performance.now() - started) / 1000);
    if (done instanceof Promise) {
      void done.then(() => {
        finish(release);
        schedule();
      });
    } else finish(release);
  }

  /** Whether the open batch waits for the connections the last landing answered (GATHER_MS). */
  function gathering(): boolean {
    if (expecting.size === 0 || !store.dirty()) return false;
    const left = GATHER_MS - (performance.now() - landedAt);
    if (left <= 0) {
      expecting.clear();
      return false;
    }
    gatherTimer ??= setTimeout(() => {
      gatherTimer = null;
      schedule();
    }, left);
    return true;
  }

  function finish(release: Set<Conn>): void {
    heldOut = 0; // written out now, or counted as unsent
    const gather = store.answersAtCommit === true;
    if (gather) {
      expecting.clear();
      landedAt = performance.now();
    }
    for (const conn of release) {
      if (conn.state === "closed") continue;
      const wrote = flushHeld(conn, batch.durable);
      stats.bytesWritten += wrote;
      if (gather && wrote > 0 && conn.state === "reading" && conn.session.held.length === 0) expecting.add(conn);
      if (conn.gone) {
        lost(conn);
        continue;
      }
      if (conn.unsentBytes >= outputLimit && conn.state !== "closing") conn.state = "output-full";
      account(conn);
      if (conn.state === "closing" && conn.session.held.length === 0 && conn.unsent.length === 0) conn.socket.end();
    }
    if (turns.afterCommit !== null && !store.dirty()) turns.afterCommit();
  }

  function runTasks(): void {
    if (tasks.length === 0) return;
    const list = tasks;
    tasks = [];
    for (const task of list) {
      try {
        task();
      } catch (e) {
        log.error(`housekeeping: ${(e as Error).message}`);
        batch.fail(e);
      }
    }
  }

  function resume(conn: Conn): void {
    if (current !== null) {
      // In a turn: run it again before this turn's commit, so its reply leaves with it.
      current.delete(conn);
      current.add(conn);
    } else {
      runnable.add(conn);
      schedule();
    }
  }

  const turns: Turns = {
    run(conn) {
      if (current !== null) resume(conn);
      // Others wait for the batch's bound: it waits its turn behind them (its reading pauses once
      // its input holds a request), so that the first to send cannot fill every batch.
      else if (heldBack) runnable.add(conn);
      else if (runConn(conn)) {
        schedule();
        return;
      }
      account(conn);
      schedule();
    },
    resume,
    task(fn) {
      tasks.push(fn);
      schedule();
    },
    drained(conn) {
      const all = drainUnsent(conn);
      if (conn.gone) return lost(conn);
      account(conn);
      if (!all) return;
      if (conn.state === "closing" && conn.session.held.length === 0) conn.socket.end();
      else if (conn.state === "output-full") {
        conn.state = conn.session.get !== null || conn.session.job !== null ? "waiting" : "reading";
        account(conn);
        resume(conn);
      }
    },
    closed(conn) {
      const lost = undelivered(conn, batch.takenIn);
      conn.state = "closed";
      stats.bufferedBytes -= conn.buffered;
      conn.buffered = 0;
      sending.delete(conn);
      overBudget.delete(conn);
      account(conn);
      runnable.delete(conn);
      expecting.delete(conn);
      touched.delete(conn);
      try {
        endSession(ctx, conn.session, lost);
      } catch (e) {
        log.error(`ending connection ${conn.session.id}: ${(e as Error).message}`);
        batch.fail(e);
      }
      schedule();
    },
    turnNow: () => turn(true),
    idle: (conn) => !runnable.has(conn) && conn.session.held.length === 0 && conn.unsent.length === 0,
    afterCommit: null,
  };
  return turns;
}
