/**
 * Socket wiring: Bun.listen, one framer and session per connection, the group-commit turn,
 * and output that respects backpressure. Bytes in → framer → commands → held replies;
 * once per event-loop turn the batch commits and the held replies of every connection are
 * written, one write per connection.
 */
import type { Socket, TCPSocketListener, UnixSocketListener } from "bun";
import { chmodSync } from "node:fs";
import { createBatch } from "./batch";
import { disconnect, execute } from "./commands";
import type { Config } from "./config";
import { createWaiters, type Context } from "./context";
import { expireLeases, resumeGet } from "./get";
import type { Logger } from "./log";
import { createFramer, type Framer } from "./protocol/framer";
import { REPLY } from "./protocol/reply";
import type { Request } from "./protocol/types";
import { createSession, type Reply, type Session } from "./session";
import { createStats, observeCommit } from "./stats";
import type { QueueStore } from "./store/store";

/** Requests one connection may run per turn before others get theirs (fairness, bounded output). */
const REQUESTS_PER_TURN = 1024;
/** Replies up to this size are copied into one buffer for one write; larger ones go piece by piece. */
const COALESCE_BYTES = 256 * 1024;
/** Expired messages deleted per housekeeping step. */
const SWEEP_BATCH = 1000;

interface Conn {
  socket: Socket<Conn>;
  session: Session;
  framer: Framer;
  /** Output the socket did not take yet, oldest first. */
  unsent: Uint8Array[];
  unsentBytes: number;
  /** The client does not read its replies fast enough: stop reading and running its requests. */
  outputFull: boolean;
  /** A blocking get waits and a whole request more is buffered behind it: stop reading. */
  inputFull: boolean;
  /** Whether the socket is paused now (outputFull or inputFull). */
  readingPaused: boolean;
  /** Close once the held and unsent output is written. */
  closing: boolean;
  /** When the client last sent anything (for --idle-timeout). */
  lastActive: number;
  rejected: boolean;
}

export interface Server {
  /** `host:port` or the unix socket path, as the listening line shows it. */
  address: string;
  port: number;
  context: Context;
  /** Stops accepting, answers what was already read, commits, closes the store. */
  stop(): Promise<void>;
}

export interface ServerDeps {
  store: QueueStore;
  log: Logger;
  version: string;
  now?: () => number;
}

export class ListenError extends Error {}

export function startServer(config: Config, deps: ServerDeps): Server {
  const { store, log } = deps;
  const stats = createStats();
  const now = deps.now ?? Date.now;
  const conns = new Set<Conn>();
  let pending = new Set<Conn>(); // connections with replies waiting for this turn's commit
  let runnable = new Set<Conn>(); // connections to run (again) in the next turn
  let scheduled = false;
  let stopping = false;

  const ctx: Context = {
    store,
    stats,
    config,
    log,
    now,
    version: deps.version,
    startedAt: now(),
    waiters: createWaiters(),
    sessions: new Set(),
    batch: createBatch(store, (e) => {
      stats.storeErrors++;
      log.error(`store failure, batch undone: ${e.message}`);
    }),
    resume: (session) => {
      const conn = bySession.get(session);
      if (conn !== undefined) {
        runnable.add(conn);
        schedule();
      }
    },
  };
  const bySession = new WeakMap<Session, Conn>();
  const limits = { maxLine: config.maxLine, maxBody: config.maxBody };

  function schedule(): void {
    if (scheduled) return;
    scheduled = true;
    setImmediate(turn);
  }

  /** Runs the connection's buffered requests until it waits, closes or has had its share. */
  function runConn(conn: Conn): void {
    const s = conn.session;
    pending.add(conn);
    if (s.waiting !== null && !resumeGet(ctx, s)) return;
    for (let n = 0; !conn.closing && s.waiting === null && !conn.outputFull; n++) {
      if (n === REQUESTS_PER_TURN) {
        runnable.add(conn);
        break;
      }
      const req = conn.framer.next();
      if (req === null) break;
      if (log.verbosity >= 2) log.trace(`<${s.id} ${describe(req)}`);
      if (execute(ctx, s, req) === "close") conn.closing = true;
    }
    updateReading(conn);
  }

  /** Pauses or resumes reading from the socket: memory per connection stays bounded. */
  function updateReading(conn: Conn): void {
    conn.inputFull = conn.session.waiting !== null && conn.framer.pending() > config.maxLine + config.maxBody;
    const pause = conn.outputFull || conn.inputFull;
    if (pause === conn.readingPaused || conn.session.closed) return;
    conn.readingPaused = pause;
    if (pause) conn.socket.pause();
    else conn.socket.resume();
  }

  /** One group-commit turn: run what is runnable, commit once, release every held reply. */
  function turn(): void {
    scheduled = false;
    const run = runnable;
    runnable = new Set();
    for (const conn of run) if (!conn.session.closed) runConn(conn);
    if (runnable.size > 0) schedule();
    const release = pending;
    pending = new Set();
    const started = store.dirty() ? performance.now() : -1;
    const done = ctx.batch.commit();
    if (started >= 0) observeCommit(stats, (performance.now() - started) / 1000);
    if (done instanceof Promise) done.then(() => release.forEach(flushHeld));
    else release.forEach(flushHeld);
  }

  function flushHeld(conn: Conn): void {
    const s = conn.session;
    if (s.closed) {
      s.held = [];
      return;
    }
    let count = 0;
    let size = 0;
    for (const reply of s.held) {
      if (!reply.complete) break;
      for (const piece of reply.pieces) size += piece.length; // strings are ASCII: one byte per char
      count++;
    }
    if (count > 0) {
      const replies = s.held.splice(0, count);
      if (size <= COALESCE_BYTES) write(conn, coalesce(replies, size));
      else {
        // Large bodies are written as they are, not copied into one more buffer.
        for (const reply of replies) {
          for (const piece of reply.pieces) write(conn, typeof piece === "string" ? Buffer.from(piece, "latin1") : piece);
        }
      }
    }
    if (conn.closing && s.held.length === 0 && conn.unsent.length === 0) conn.socket.end();
  }

  function write(conn: Conn, out: Uint8Array): void {
    stats.bytesWritten += out.length;
    if (conn.unsent.length === 0) {
      const n = conn.socket.write(out);
      if (n === out.length) return;
      out = out.subarray(Math.max(n, 0));
    }
    conn.unsent.push(out);
    conn.unsentBytes += out.length;
    if (conn.unsentBytes > config.maxUnsent && !conn.outputFull) {
      conn.outputFull = true;
      updateReading(conn);
    }
  }

  function drain(conn: Conn): void {
    while (conn.unsent.length > 0) {
      const out = conn.unsent[0]!;
      const n = conn.socket.write(out);
      if (n < out.length) {
        conn.unsent[0] = out.subarray(Math.max(n, 0));
        conn.unsentBytes -= Math.max(n, 0);
        return;
      }
      conn.unsent.shift();
      conn.unsentBytes -= out.length;
    }
    if (conn.closing && conn.session.held.length === 0) {
      conn.socket.end();
    } else if (conn.outputFull) {
      conn.outputFull = false;
      runnable.add(conn);
      schedule();
    }
  }

  const handlers = {
    open(socket: Socket<Conn>) {
      if (stopping || conns.size >= config.maxConns) {
        stats.rejectedConnections++;
        socket.data = { rejected: true } as Conn;
        socket.terminate();
        log.debug(`connection refused: ${conns.size} of ${config.maxConns} in use`);
        return;
      }
      const session = createSession();
      const conn: Conn = {
        socket,
        session,
        framer: createFramer(limits),
        unsent: [],
        unsentBytes: 0,
        outputFull: false,
        inputFull: false,
        readingPaused: false,
        closing: false,
        lastActive: now(),
        rejected: false,
      };
      socket.data = conn;
      if ("setNoDelay" in socket) socket.setNoDelay(true);
      conns.add(conn);
      bySession.set(session, conn);
      ctx.sessions.add(session);
      stats.currConnections++;
      stats.totalConnections++;
    },
    data(socket: Socket<Conn>, chunk: Buffer) {
      const conn = socket.data;
      if (conn.rejected || conn.closing) return;
      stats.bytesRead += chunk.length;
      conn.lastActive = now();
      conn.framer.push(chunk);
      // A waiting connection keeps its later requests (in order) until its get ends.
      if (conn.session.waiting === null && !conn.outputFull) runConn(conn);
      else updateReading(conn);
      schedule();
    },
    drain(socket: Socket<Conn>) {
      const conn = socket.data;
      if (!conn.rejected) drain(conn);
    },
    close(socket: Socket<Conn>) {
      const conn = socket.data;
      if (conn === undefined || conn.rejected || !conns.delete(conn)) return;
      stats.currConnections--;
      ctx.sessions.delete(conn.session);
      disconnect(ctx, conn.session);
      schedule();
    },
    error(socket: Socket<Conn>, error: Error) {
      log.debug(`connection error: ${error.message}`);
    },
  };

  let listener: TCPSocketListener<Conn> | UnixSocketListener<Conn>;
  let address: string;
  try {
    if (config.unixSocket !== null) {
      listener = Bun.listen<Conn>({ unix: config.unixSocket, socket: handlers });
      chmodSync(config.unixSocket, config.socketMode);
      address = config.unixSocket;
    } else {
      listener = Bun.listen<Conn>({ hostname: config.host, port: config.port, socket: handlers });
      address = `${config.host}:${listener.port}`;
    }
  } catch (e) {
    const where = config.unixSocket ?? `${config.host}:${config.port}`;
    const code = (e as { code?: string }).code;
    throw new ListenError(`cannot listen on ${where}: ${code === "EADDRINUSE" ? "address already in use" : (e as Error).message}`);
  }

  const housekeeping = setInterval(() => {
    try {
      if (config.expiry && store.sweepExpired(now(), SWEEP_BATCH) > 0) schedule();
      if (config.openTimeoutMs > 0) {
        expireLeases(ctx, now());
        schedule();
      }
      if (config.idleTimeoutS > 0) closeIdle(now() - config.idleTimeoutS * 1000);
      if (!store.dirty()) store.maintain();
    } catch (e) {
      log.error(`housekeeping: ${(e as Error).message}`);
      store.rollback();
    }
  }, config.maintainMs);

  /** Closes connections silent since `before`, unless they wait in a blocking get. */
  function closeIdle(before: number): void {
    for (const conn of conns) {
      if (conn.lastActive >= before || conn.session.waiting !== null || conn.closing) continue;
      log.debug(`closing connection ${conn.session.id}: idle for ${config.idleTimeoutS} s`);
      conn.socket.end();
    }
  }

  async function stop(): Promise<void> {
    if (stopping) return;
    stopping = true;
    clearInterval(housekeeping);
    listener.stop(true);
    // Answer what was already read: waiting gets end as if their time ran out.
    for (const conn of conns) {
      const pendingGet = conn.session.waiting;
      if (pendingGet === null) continue;
      if (pendingGet.timer !== null) clearTimeout(pendingGet.timer);
      ctx.waiters.remove(pendingGet.req.keys[pendingGet.index]!.queue, conn.session);
      pendingGet.reply.pieces.push(REPLY.END);
      pendingGet.reply.complete = true;
      conn.session.waiting = null;
      pending.add(conn);
    }
    turn();
    // Open messages go back to their queues (as at a restart, but committed now).
    for (const conn of conns) {
      disconnect(ctx, conn.session);
      conn.socket.end();
    }
    await ctx.batch.commit();
    store.close();
  }

  return { address, port: "port" in listener ? listener.port : 0, context: ctx, stop };
}

/** A request as one log line for -vv (bodies are not logged, only their size). */
function describe(req: Request): string {
  switch (req.kind) {
    case "get":
      return `${req.withIds ? "gets" : "get"} ${req.keys.map((k) => k.queue + (k.open ? "/open" : "") + (k.close ? "/close" : "") +
        (k.abort ? "/abort" : "") + (k.peek ? "/peek" : "") + (k.timeout >= 0 ? `/t=${k.timeout}` : "")).join(" ")}`;
    case "set":
      return `set ${req.queue} ${req.flags} ${req.exptime} ${req.data.length}${req.noreply ? " noreply" : ""}`;
    case "error":
      return `(refused) ${req.reply.trimEnd()}`;
    default:
      return "queue" in req ? `${req.kind} ${req.queue}` : req.kind;
  }
}

/** The replies' pieces in one buffer of `size` bytes (strings are ASCII: one byte per char). */
function coalesce(replies: Reply[], size: number): Buffer {
  const out = Buffer.allocUnsafe(size);
  let at = 0;
  for (const reply of replies) {
    for (const piece of reply.pieces) {
      if (typeof piece === "string") at += out.write(piece, at, "latin1");
      else {
        out.set(piece, at);
        at += piece.length;
      }
    }
  }
  return out;
}
