/**
 * Socket wiring: Bun.listen and the socket events, handed to the connection (conn.ts) and the
 * group-commit turn (turn.ts); housekeeping.ts runs the periodic work inside turns.
 */
import { createQueueLimits } from "./queue-limits";
import { createFanout } from "./fanout";
import { createFailureLog } from "./failure-log";
import type { Socket } from "bun";
import { createAuth } from "./auth";
import { createBatch } from "./batch";
import type { Config } from "./config";
import { createConn, type Conn } from "./conn";
import { createWaiters, type Context } from "./context";
import { endAllWaits, serveWaiters } from "./get";
import { dropLostOpens } from "./open-lost";
import { startHousekeeping } from "./housekeeping";
import type { Logger } from "./log";
import { openListeners, type Listening } from "./listeners";
import { createFramer } from "./protocol/framer";
import type { Request } from "./protocol/types";
import { createSession, type Session } from "./session";
import { startSnapshotSocket } from "./snapshot-socket";
import { createStats } from "./stats";
import type { QueueStore } from "./store/store";
import { describeCertificate } from "./tls";
import { createTurns } from "./turn";

/** Longest time a stop spends answering what was read and flushing it (docs/protocol.md). */
const STOP_FLUSH_MS = 5000;

export interface Server {
  /** `host:port` or the unix socket path, as the listening line shows it. */
  address: string;
  port: number;
  /** Every listener, the main one first (one listening line each). */
  listening: Listening[];
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

export { ListenError } from "./listeners";

export function startServer(config: Config, deps: ServerDeps): Server {
  const { store, log } = deps;
  const stats = createStats();
  const now = deps.now ?? Date.now;
  const conns = new Set<Conn>();
  const bySession = new WeakMap<Session, Conn>();
  let retries: (() => void)[] = [];

  const failures = createFailureLog(log); // once per outage, then a count
  const queueLimits = createQueueLimits(config);
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
    limits: queueLimits,
    fanout: createFanout(config.fanout, queueLimits.table, () => store.list().map((q) => q.name)),
    batch: createBatch(
      store,
      (e) => {
        stats.storeErrors++;
        failures.failed(e);
      },
      () => failures.committed(),
    ),
    resume: (session) => {
      const conn = bySession.get(session);
      if (conn !== undefined && conn.state !== "closed") turns.resume(conn);
    },
    retry: (task) => void retries.push(task),
    stopping: false,
  };
  if (config.authFile !== null) ctx.auth = createAuth(config.authFile, config.authTimeoutS, log);
  if (config.tls !== null) {
    ctx.refreshCerts = () => {
      const next = listeners.refreshCerts();
      ctx.onCerts?.(next);
      return describeCertificate(next.cert);
    };
  }
  const turns = createTurns(ctx, describe, (conn) => {
    // A write found it closed (no close event comes while reading is paused): end it here.
    drop(conn);
    conn.socket.terminate();
  });

  if (store.onAvailable !== undefined) {
    // Another node stored or returned messages: waiting gets here look again, inside a turn.
    store.onAvailable = (queue) =>
      turns.task(() => {
        for (const q of queue === null ? [...ctx.waiters.byQueue().keys()] : [queue]) serveWaiters(ctx, q);
      });
  }

  if (store.onLost !== undefined) {
    // This node was reaped by another while it ran (store.ts onLost): those messages went back
    // and may be open elsewhere. A later close of one answers LEASE_EXPIRED and confirms nothing.
    // At once, with the store's own loss (open-lost.ts): no close or open may come in between.
    store.onLost = (ids) => dropLostOpens(ctx, ids);
  }

  /** The connection is gone: its session ends inside the batch (turn.ts closed). */
  function drop(conn: Conn): void {
    if (!conns.delete(conn)) return;
    ctx.auth?.closed(conn.session);
    stats.currConnections--;
    ctx.sessions.delete(conn.session);
    turns.closed(conn);
  }
  const limits = { maxLine: config.maxLine, maxBody: config.maxBody };

  const handlers = {
    open(socket: Socket<Conn>) {
      if (ctx.stopping || conns.size >= config.maxConns) {
        stats.rejectedConnections++;
        socket.data = undefined as unknown as Conn;
        socket.terminate();
        log.debug(`connection refused: ${conns.size} of ${config.maxConns} in use`);
        return;
      }
      const session = createSession();
      const conn = createConn(socket, session, createFramer(limits), now());
      socket.data = conn;
      if ("setNoDelay" in socket) socket.setNoDelay(true);
      conns.add(conn);
      bySession.set(session, conn);
      ctx.sessions.add(session);
      ctx.auth?.opened(session, socket.remoteAddress ?? "unknown", () => socket.end());
      stats.currConnections++;
      stats.totalConnections++;
    },
    data(socket: Socket<Conn>, chunk: Buffer) {
      const conn = socket.data;
      if (conn === undefined || conn.state === "closing" || conn.state === "closed") return;
      stats.bytesRead += chunk.length;
      conn.lastActive = now();
      conn.framer.push(chunk);
      turns.run(conn);
    },
    drain(socket: Socket<Conn>) {
      const conn = socket.data;
      if (conn !== undefined && conn.state !== "closed") turns.drained(conn);
    },
    close(socket: Socket<Conn>) {
      if (socket.data !== undefined) drop(socket.data);
    },
    error(_socket: Socket<Conn>, error: Error) {
      log.debug(`connection error: ${error.message}`);
    },
  };

  const listeners = openListeners(config, handlers, log);
  const housekeeping = startHousekeeping(ctx, turns, conns, () => {
    const list = retries;
    retries = [];
    return list;
  });
  // After housekeeping: it chains onto the turn's afterCommit, which housekeeping sets.
  const snapshotSocket = store.snapshots === undefined ? null : startSnapshotSocket(config.home, store.snapshots, turns, log);

  /** How long a stop waits for batches in flight: its own flush, or the store's bound if longer. */
  const flushMs = Math.max(STOP_FLUSH_MS, store.commitBoundMs ?? 0);

  async function stop(): Promise<void> {
    if (ctx.stopping) return;
    ctx.stopping = true;
    housekeeping.stop();
    snapshotSocket?.stop(); // a copy in progress is told that its snapshot did not last
    listeners.stop(); // stop accepting; the open connections are answered first
    // Answer what was already read: waiting gets end as if their time ran out.
    endAllWaits(ctx);
    for (const conn of conns) turns.resume(conn);
    // A request the connection has begun to read was sent before the stop: its rest is read and
    // it is answered too (seen under load: a set whose body was still arriving behind a waiting
    // get). The loop looks at the sockets at least once, for bytes that had already arrived.
    const answered = (conn: Conn) => turns.idle(conn) && (conn.framer.pending() === 0 || conn.state === "closing");
    // While a batch is in flight, up to the store's own bound (a COMMIT with no answer is looked
    // up past its timeout): its replies are waited for, not cut by closing their connections.
    const start = performance.now();
    for (let looked = false; ; looked = true) {
      turns.turnNow();
      const waited = performance.now() - start;
      if ((looked && [...conns].every(answered)) || waited > flushMs || (waited > STOP_FLUSH_MS && ctx.batch.inFlight() === 0)) break;
      await Bun.sleep(1);
    }
    // Open messages (and any reply that could not be sent) go back to their queues (settle).
    for (const conn of [...conns]) {
      drop(conn);
      conn.socket.end();
    }
    await settle();
    if (ctx.batch.inFlight() > 0) log.error(`stopping with a batch still committing after ${flushMs} ms: the store closes under it`);
    if (retries.length > 0) {
      log.error(`stopping with ${retries.length} give-backs not done (the store kept failing): open messages ` +
        "return at the next start; a message whose reply was never sent stays consumed");
    }
    await store.close();
  }

  /**
   * Before the store closes, nothing may be in flight: a take Postgres answers after its
   * connection was dropped gives its message back (give-back.ts) in a batch committed here, not
   * into a closed store (the message would stay consumed, unanswered). Give-backs a failed batch
   * left to redo are tried again, a few times. Each batch ends within the store's own timeout; this
   * waits at most that long more (flushMs).
   */
  async function settle(): Promise<void> {
    const deadline = performance.now() + flushMs;
    for (let tries = 0; ; ) {
      if (ctx.batch.inFlight() === 0 && !store.dirty() && retries.length > 0 && tries < 3) {
        tries++;
        const redo = retries;
        retries = [];
        redo.forEach((task) => turns.task(task));
      }
      turns.turnNow();
      const busy = ctx.batch.inFlight() > 0 || store.dirty() || (retries.length > 0 && tries < 3);
      if (!busy || performance.now() > deadline) return;
      await Bun.sleep(1);
    }
  }

  const main = listeners.list[0]!;
  return { address: main.address, port: main.port, listening: listeners.list, context: ctx, stop };
}

/** A request as one log line for -vv (bodies are not logged, only their size). */
function describe(req: Request): string {
  switch (req.kind) {
    case "get":
      return `${req.withIds ? "gets" : "get"} ${req.keys.map((k) => k.key).join(" ")}`;
    case "set":
      return `set ${req.queue} ${req.flags} ${req.exptime} ${req.data.length}${req.noreply ? " noreply" : ""}`;
    case "error":
      return `(refused) ${req.reply.trimEnd()}`;
    default:
      return "queue" in req ? `${req.kind} ${req.queue}` : req.kind;
  }
}


