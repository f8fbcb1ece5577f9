/**
 * The command layer: turns one parsed request into store calls and reply text. It knows
 * queues, counters and wire words, never sockets. Replies go to the session's held list
 * and leave only after the batch commits (batch.ts); a reply that reports a change
 * depends on that commit.
 */
import type { Context } from "./context";
import { continueGet, startGet, serveWaiters } from "./get";
import { REPLY, serverError, statLine } from "./protocol/reply";
import type { Request } from "./protocol/types";
import { newReply, put, say, settle, type Reply, type Session } from "./session";
import { resetStats } from "./stats";
import { StoreError, StoreRefused, type QueueDetail } from "./store/store";

/** What the connection does next: take the next request, wait (a blocking get), or close. */
export type Outcome = "next" | "wait" | "close";

/** memcached: an exptime up to 30 days is relative, above it is a Unix time. */
const RELATIVE_LIMIT_S = 60 * 60 * 24 * 30;

export function execute(ctx: Context, s: Session, req: Request): Outcome {
  const held = s.held.length;
  try {
    const refused = ctx.auth?.guard(ctx, s, req) ?? null; // -Y: login, rights (auth.ts)
    if (refused !== null) return refused;
    return run(ctx, s, req);
  } catch (e) {
    return failed(ctx, s, req, s.held.length > held ? s.held[s.held.length - 1]! : null, e);
  }
}

/**
 * Goes on with what the session started in an earlier turn (a get after its wait, a listing),
 * through the same failure path as a request's first run.
 */
export function resumeSession(ctx: Context, s: Session): Outcome {
  const own = s.get?.reply ?? (s.job !== null ? s.held[s.held.length - 1]! : null);
  try {
    const done = s.job === null ? true : s.job();
    if (done !== true) return done === "close" ? "close" : "wait";
    return s.get !== null && !continueGet(ctx, s) ? "wait" : "next";
  } catch (e) {
    return failed(ctx, s, null, own, e);
  }
}

/**
 * The one way a failure inside a request ends: the batch is undone (batch.ts), which ends every
 * reply it touched, and the request whose run failed (`req`, null when resumed) gets one reply:
 * its own, ended here if the batch had not touched it, or one SERVER_ERROR line.
 */
function failed(ctx: Context, s: Session, req: Request | null, own: Reply | null, e: unknown): Outcome {
  if (req !== null && e instanceof StoreRefused) {
    // The store turned this request down having changed nothing: it fails alone.
    if (!("noreply" in req && req.noreply)) say(s, serverError(e.message));
    else ctx.log.warn(`noreply ${req.kind} refused: ${e.message}`);
    return "next";
  }
  // After a store failure the connection goes on; after a bug of ours it is closed, as its
  // state is unknown.
  const bug = !(e instanceof StoreError);
  if (bug) ctx.log.error(`internal error on ${req?.kind ?? "a resumed request"}: ${(e as Error).stack ?? e}`);
  const error = bug ? new StoreError("internal error") : e;
  ctx.batch.fail(error);
  s.job = null;
  if (own !== null && !own.complete) settle(own, null, error.message);
  else if (own === null) {
    const noreply = req !== null && "noreply" in req && req.noreply;
    if (bug || !noreply) say(s, serverError(error.message));
    else ctx.log.warn(`noreply ${req!.kind} failed: ${error.message}`);
  }
  return bug ? "close" : "next";
}

function run(ctx: Context, s: Session, req: Request): Outcome {
  const { store, batch } = ctx;
  switch (req.kind) {
    case "get":
      if (ctx.fanout?.enabled) for (const key of req.keys) ctx.fanout.seen(key.queue);
      if (store.delays === undefined && req.keys.some((k) => k.delay > 0)) {
        say(s, REPLY.NO_DELAYS);
        return "next";
      }
      return startGet(ctx, s, req) ? "next" : "wait";
    case "set":
      return runSet(ctx, s, req);
    case "delete": {
      const found = store.drop(req.queue);
      ctx.fanout?.dropped(req.queue);
      if (found instanceof Promise) return answerLater(ctx, s, req.noreply, found.then((f) => (f ? REPLY.DELETED : REPLY.NOT_FOUND)));
      if (!req.noreply) batch.depends(say(s, found ? REPLY.DELETED : REPLY.NOT_FOUND));
      return "next";
    }
    case "flush":
      store.flush(req.queue);
      if (!req.noreply) batch.depends(say(s, REPLY.OK));
      return "next";
    case "flush_all":
      store.flushAll();
      if (!req.noreply) batch.depends(say(s, REPLY.OK));
      return "next";
    case "stats":
    case "stats_queue":
      // On a store shared by nodes the counters are read again first (afterRefresh).
      if (store.refresh !== undefined && !(req.kind === "stats" && req.section === "reset")) return afterRefresh(ctx, s, req);
      return statsReply(ctx, s, req);
    case "version":
      say(s, `VERSION ${ctx.version}\r\n`);
      return "next";
    case "verbosity":
      if (!req.noreply) say(s, REPLY.OK);
      return "next";
    case "quit":
      return "close";
    case "refresh_certs":
      return refreshCerts(ctx, s);
    case "redrive":
      return runRedrive(ctx, s, req);
    case "error":
      say(s, req.reply);
      return req.close ? "close" : "next";
  }
}

/** A set: refused (too many queues, no such feature, queue full), deduplicated, or stored and waiters served. */
function runSet(ctx: Context, s: Session, req: Extract<Request, { kind: "set" }>): Outcome {
  const { store, stats, batch } = ctx;
  stats.setCmds++;
  if (!store.has(req.queue) && store.totals().queues >= ctx.config.maxQueues) {
    if (!req.noreply) say(s, REPLY.TOO_MANY_QUEUES);
    return "next";
  }
  const { delay, id: token } = req.options;
  const unsupported = delay > 0 && store.delays === undefined ? REPLY.NO_DELAYS
    : token !== null && store.dedup === undefined ? REPLY.NO_DEDUP : null;
  if (unsupported !== null) {
    if (!req.noreply) say(s, unsupported);
    return "next";
  }
  const now = ctx.now();
  // A producer's retry: its first set is stored (or in this very batch, and fails with it).
  if (token !== null && store.dedup!.seen(req.queue, token, now)) {
    stats.setHits++;
    if (!req.noreply) batch.depends(say(s, REPLY.STORED));
    return "next";
  }
  if (ctx.limits !== undefined && !ctx.limits.admit(ctx, req.queue, req.data.length)) {
    if (!req.noreply) say(s, REPLY.QUEUE_FULL);
    else ctx.log.warn(`noreply set refused: queue ${req.queue} is full`);
    return "next";
  }
  if (delay > 0) store.delays!.enqueue(req.queue, req.flags, req.data, expiresAt(ctx, req.queue, req.exptime), now, now + delay);
  else store.enqueue(req.queue, req.flags, req.data, expiresAt(ctx, req.queue, req.exptime), now);
  if (token !== null) store.dedup!.remember(req.queue, token, now + ctx.config.dedupWindowMs);
  if (ctx.fanout?.enabled) fanOut(ctx, req, now);
  if (token !== null) store.dedup!.settled?.();
  stats.setHits++;
  if (!req.noreply) batch.depends(say(s, REPLY.STORED));
  if (delay === 0) serveWaiters(ctx, req.queue); // a delayed one is served once due (housekeeping.ts)
  return "next";
}

/** `redrive <from> <to>`: OK <n> once the move is in the batch (later, on a store that counts it remotely). */
function runRedrive(ctx: Context, s: Session, req: Extract<Request, { kind: "redrive" }>): Outcome {
  const { store, batch } = ctx;
  if (store.deadLetters === undefined) {
    say(s, REPLY.NO_REDRIVE);
    return "next";
  }
  const n = store.deadLetters.redrive(req.from, req.to, ctx.now());
  if (n instanceof Promise) return answerLater(ctx, s, false, n.then((count) => `OK ${count}\r\n`));
  batch.depends(say(s, `OK ${n}\r\n`));
  if (n > 0) serveWaiters(ctx, req.to);
  return "next";
}

/**
 * A store that answers when it has run the statement (Postgres: a redrive's count, whether a
 * delete found its queue): the reply takes its place now and is filled in then, before its batch
 * commits; the moved messages wake waiters through the store. `noreply`: nothing is said.
 */
function answerLater(ctx: Context, s: Session, noreply: boolean, line: Promise<string>): Outcome {
  if (noreply) {
    line.catch(() => {}); // the batch fails with it
    return "next";
  }
  const reply = newReply(false);
  s.held.push(reply);
  ctx.batch.depends(reply);
  line.then(
    (text) => {
      if (reply.complete) return; // its batch failed meanwhile: SERVER_ERROR was said
      put(reply, text);
      reply.complete = true;
      ctx.resume(s);
    },
    () => {}, // the batch fails with it, and that settles the reply
  );
  return "next";
}

/** `stats`, `stats reset`, `stats queue` and `stats queue <q>`. */
function statsReply(ctx: Context, s: Session, req: Extract<Request, { kind: "stats" | "stats_queue" }>): Outcome {
  const { store, stats } = ctx;
  switch (req.kind) {
    case "stats":
      if (req.section === "reset") {
        resetStats(stats);
        say(s, REPLY.RESET);
      } else if (req.section === "queues") {
        return listQueues(ctx, s);
      } else {
        say(s, generalStats(ctx) + REPLY.END);
      }
      return "next";
    case "stats_queue": {
      const d = store.detail(req.queue, ctx.now());
      const lines = d === null ? [] : [
        statLine("items", d.items),
        statLine("bytes", d.bytes),
        statLine("total", d.total),
        statLine("fetched", d.fetched),
        statLine("open", d.open),
        statLine("oldest_age_ms", d.oldestAgeMs),
        // Fields the queue features add come after the SPEC's six (DECISIONS), where the store has them.
        ...(d.delayed === undefined ? [] : [statLine("delayed", d.delayed)]),
        ...(d.deduplicated === undefined ? [] : [statLine("deduplicated", d.deduplicated)]),
        ...limitLines(ctx, req.queue, d),
      ];
      say(s, lines.join("") + REPLY.END);
      return "next";
    }
  }
}

/**
 * Fanout: a copy of the set's message in each child of its queue, in the same batch (one commit
 * makes every copy durable). A full child counts the copy it refused, and the parent's set stands.
 */
function fanOut(ctx: Context, req: Extract<Request, { kind: "set" }>, now: number): void {
  const fanout = ctx.fanout!;
  fanout.seen(req.queue);
  const { delay } = req.options;
  for (const child of fanout.children(req.queue)) {
    if (ctx.limits !== undefined && !ctx.limits.admit(ctx, child, req.data.length)) {
      ctx.limits.fanoutRefused(ctx, child);
      continue;
    }
    const expires = expiresAt(ctx, child, req.exptime); // the child's own expiry
    if (delay > 0) ctx.store.delays!.enqueue(child, req.flags, req.data, expires, now, now + delay);
    else ctx.store.enqueue(child, req.flags, req.data, expires, now);
    if (delay === 0) serveWaiters(ctx, child);
  }
}

/**
 * The settings in force for the queue and the counters of its features, each group only on a
 * server where some queue uses the feature (so a plain server's reply keeps the SPEC's fields).
 * The counters are the store's where it keeps them (SQLite: `features`; Postgres: summed over
 * nodes), else this server's since its start (queue-limits.ts).
 */
function limitLines(ctx: Context, queue: string, d: QueueDetail | null): string[] {
  const limits = ctx.limits;
  if (limits === undefined) return [];
  const s = limits.settings(queue);
  const counts = d?.features ?? limits.counted(queue);
  const lines: string[] = [];
  if (limits.limited) {
    lines.push(statLine("max_items", s.maxItems), statLine("max_bytes", s.maxBytes), statLine("discard_old", s.discardOld ? 1 : 0));
    lines.push(statLine("discarded", d?.discarded ?? counts.discarded));
  }
  if (ctx.fanout?.enabled) lines.push(statLine("fanout_refused", counts.fanoutRefused));
  if (limits.deadLettering) {
    lines.push(statLine("max_deliveries", s.maxDeliveries), statLine("dlq", s.dlq ?? `${queue}.dlq`));
    lines.push(statLine("dead_lettered", d?.deadLettered ?? counts.deadLettered), statLine("dead_letter_skipped", counts.deadLetterSkipped));
  }
  if (limits.table.leases) lines.push(statLine("open_timeout", s.openTimeoutMs));
  // As the config file spells it: false, true, or the lifetime in seconds.
  if (limits.table.expiring) lines.push(statLine("expiry", !s.expiry ? "false" : s.lifetimeS > 0 ? s.lifetimeS : "true"));
  return lines;
}

/**
 * A store shared by nodes (Postgres) counts what every node did: the stats request waits for it
 * to read the counters again (a round trip, no more), then runs as on a store of its own.
 */
function afterRefresh(ctx: Context, s: Session, req: Extract<Request, { kind: "stats" | "stats_queue" }>): Outcome {
  let ready = false;
  s.job = () => {
    if (!ready) return false;
    s.job = null;
    // A listing goes on as its own job over later turns.
    return statsReply(ctx, s, req) !== "wait";
  };
  void ctx.store.refresh!()
    .catch((e: Error) => ctx.log.warn(`reading the counters of every node: ${e.message}`))
    .finally(() => {
      ready = true;
      ctx.resume(s);
    });
  return "wait";
}

/** Queues listed per turn by `stats queue`: with 100,000 queues no turn spends over ~2 ms on it. */
const LIST_SLICE = 2000;

/**
 * `stats queue`: every queue's counters as of the request, sorted by name, built over as many
 * turns as it takes (the session's job) so the other clients are served in between.
 */
function listQueues(ctx: Context, s: Session): Outcome {
  const auth = ctx.auth;
  const queues = auth == null ? ctx.store.list() : ctx.store.list().filter((q) => auth.mayRead(s, q.name));
  const reply = newReply(false);
  s.held.push(reply);
  let i = 0;
  const job = () => {
    const end = Math.min(queues.length, i + LIST_SLICE);
    const lines: string[] = [];
    for (; i < end; i++) lines.push(statLine(queues[i]!.name, `${queues[i]!.total}/${queues[i]!.fetched}`));
    put(reply, lines.join(""));
    if (i < queues.length) {
      // A timer, not an immediate: every turn waiting to run goes first (slices.ts).
      setTimeout(() => ctx.resume(s), 0);
      return false;
    }
    put(reply, REPLY.END);
    reply.complete = true;
    s.job = null;
    return true;
  };
  s.job = job;
  return job() ? "next" : "wait";
}

/** memcached's refresh_certs: OK, or why the old certificate stays (one line). */
function refreshCerts(ctx: Context, s: Session): Outcome {
  if (ctx.refreshCerts === undefined) {
    say(s, "CLIENT_ERROR TLS is not on (-Z)\r\n");
    return "next";
  }
  try {
    ctx.log.info(`refresh_certs: reloaded the TLS certificate: ${ctx.refreshCerts()}`);
    say(s, REPLY.OK);
  } catch (e) {
    ctx.log.error(`refresh_certs: cannot reload the TLS certificate: ${(e as Error).message}; keeping the old one`);
    say(s, serverError(`cannot reload the TLS certificate: ${(e as Error).message}`));
  }
  return "next";
}

/**
 * When a message set now into `queue` with `exptime` expires (ms since the epoch), 0 for never:
 * the queue's expiry setting (--expiry, or `expiry` in its table) says whether exptime counts,
 * and a lifetime (`expiry = <s>`) stands in for an exptime of 0.
 */
export function expiresAt(ctx: Context, queue: string, exptime: number): number {
  const s = ctx.limits?.settings(queue);
  if (!(s?.expiry ?? ctx.config.expiry)) return 0;
  if (exptime === 0) return s === undefined || s.lifetimeS === 0 ? 0 : ctx.now() + s.lifetimeS * 1000;
  if (exptime < 0) return 1; // memcached: a negative exptime is already expired
  return exptime <= RELATIVE_LIMIT_S ? ctx.now() + exptime * 1000 : exptime * 1000;
}

function generalStats(ctx: Context): string {
  const { stats } = ctx;
  const now = ctx.now();
  const totals = ctx.store.totals();
  const usage = process.resourceUsage();
  const fields: [string, string | number][] = [
    ["pid", process.pid],
    ["uptime", Math.floor((now - ctx.startedAt) / 1000)],
    ["time", Math.floor(now / 1000)],
    ["version", ctx.version],
    ["pointer_size", 64],
    ["rusage_user", (usage.userCPUTime / 1e6).toFixed(6)],
    ["rusage_system", (usage.systemCPUTime / 1e6).toFixed(6)],
    ["curr_connections", stats.currConnections],
    ["total_connections", stats.totalConnections],
    ["rejected_connections", stats.rejectedConnections],
    ["get_cmds", stats.getCmds],
    ["get_hits", stats.getHits],
    ["get_misses", stats.getMisses],
    ["get_timeouts", stats.getTimeouts],
    ["set_cmds", stats.setCmds],
    ["set_hits", stats.setHits],
    ["bytes_read", stats.bytesRead],
    ["bytes_written", stats.bytesWritten],
    ["curr_items", totals.items],
    ["open_items", totals.open],
    ["expired_items", totals.expired],
    ["queues", totals.queues],
    ["waiters", ctx.waiters.count()],
    ["commits", stats.commits],
    ["store_errors", stats.storeErrors],
    ["buffered_bytes", stats.bufferedBytes],
    ["over_budget_connections", stats.overBudget],
    ["limit_maxbytes", ctx.config.maxBody],
    ["sync", ctx.config.sync],
  ];
  return fields.map(([name, value]) => statLine(name, value)).join("");
}
