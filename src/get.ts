/**
 * `get` and `gets` with Kestrel's options: plain (take the head), /peek, /open, /close,
 * /abort and /t=<ms>. Each key is served in order into one reply that ends with END.
 *
 * A key with /t= on an empty queue parks the get in the waiters of that queue, unless the reply
 * already holds a VALUE (then it returns at once). A set, or a message coming back, serves the
 * first waiter inside the same batch, so the handover is as durable as any get. A parked get
 * leaves that state only through endWait(), whatever ends it: a message, its timer, a failure,
 * the connection closing, or the server stopping.
 */
import { connBytes } from "./config";
import type { Context } from "./context";
import { REPLY, valueHeader } from "./protocol/reply";
import type { GetKey, Request } from "./protocol/types";
import { deferGet, deferrable } from "./get-deferred";
import { fromAnswer, giveBackTake, restore } from "./give-back";
import { newReply, put, say, settle, type PendingGet, type Session } from "./session";
import { forget, lossMark, lostOpen, stillHeld } from "./open-lost";
import { StoreError, type Message } from "./store/store";

const CRLF = "\r\n";

/** Runs a get; false if it now waits for a message (ctx.resume() says when to go on). */
export function startGet(ctx: Context, s: Session, req: Extract<Request, { kind: "get" }>): boolean {
  // A reply that rests on what earlier requests of this batch did to the session (an open, an
  // abort) is only true if that batch commits: it depends on it too.
  const rests = s.changedIn === ctx.batch.epoch();
  const refusal = refuse(ctx, s, req.keys);
  if (refusal !== null) {
    const line = say(s, refusal);
    if (rests) ctx.batch.depends(line);
    if (refusal === REPLY.LEASE_EXPIRED) {
      // The error is said once. It stands whatever the batch does, unless the reply depends on
      // the batch: then a failure turns it into SERVER_ERROR, and the error is still owed.
      const said = req.keys.filter((key) => key.close && s.expired.delete(key.queue));
      if (rests) changeSession(ctx, s, () => said.forEach((key) => s.expired.add(key.queue)));
    }
    return true;
  }
  const reply = newReply(true);
  s.held.push(reply);
  if (rests) ctx.batch.depends(reply);
  if (deferrable(ctx, s, req)) return deferGet(ctx, s, req, reply);
  // The session's last get is reused when nothing outlived it (a take answered later keeps it).
  let g = s.spareGet;
  if (g === null) g = { req, index: 0, reply, state: "running", timer: null, deadline: -1, escaped: false };
  else {
    s.spareGet = null;
    g.req = req;
    g.index = 0;
    g.reply = reply;
    g.state = "running";
    g.deadline = -1;
  }
  s.get = g;
  // A failure settles the reply (session.ts): the get is over, whatever state it was in.
  reply.onSettle = s.onGetSettled ??= () => endWait(ctx, s, "settled");
  return continueGet(ctx, s);
}

/** Goes on with the session's get; false if it waits (again), or waits for the store. */
export function continueGet(ctx: Context, s: Session): boolean {
  const g = s.get!;
  if (g.state === "parked" || g.state === "fetching") return false;
  const { keys } = g.req;
  const limit = replyLimit(ctx);
  while (g.index < keys.length) {
    const key = keys[g.index]!;
    let served: boolean;
    if (g.state === "ready") served = true;
    else if (g.state === "missed") served = false;
    else {
      // Past the reply's byte budget the remaining keys yield nothing, and take nothing.
      if (g.reply.size > limit) break;
      const result = serveKey(ctx, s, key, g);
      if (result instanceof Promise) {
        later(ctx, s, g, result);
        return false;
      }
      served = result;
    }
    g.state = "running";
    if (!served && wantsMessage(key)) {
      if (key.timeout > 0 && g.reply.values === 0 && !ctx.stopping && park(ctx, s, key, g)) return false;
      countMiss(ctx);
    }
    g.index++;
    g.deadline = -1;
  }
  put(g.reply, REPLY.END);
  g.reply.complete = true;
  g.reply.onSettle = null;
  s.get = null;
  if (!g.escaped) s.spareGet = g;
  return true;
}

/** A take the store completes later: the get goes on from its outcome, or ends on a failure. */
function later(ctx: Context, s: Session, g: PendingGet, result: Promise<boolean>): void {
  g.state = "fetching";
  g.escaped = true; // the promise below holds it: never reuse it
  const epoch = ctx.batch.epoch(); // the take belongs to the batch open now
  result.then(
    (served) => {
      if (s.get !== g) return; // its connection closed meanwhile
      g.state = served ? "ready" : "missed";
      ctx.resume(s);
    },
    (e) => {
      ctx.batch.fail(e, epoch);
      if (s.get === g && !g.reply.complete) settle(g.reply, null, e instanceof Error ? e.message : String(e));
    },
  );
}

/** The largest a get reply may grow before its remaining keys are skipped (memory bound). */
function replyLimit(ctx: Context): number {
  return connBytes(ctx.config) - ctx.config.maxUnsent - 2 * (ctx.config.maxBody + ctx.config.maxLine);
}

/**
 * Ends a parked get's wait, the one way out of that state: `served` (the key got its message)
 * and `timeout` go on with the next key; `settled` (a failure ended the reply) and `gone` (the
 * connection closed) end the get.
 */
export function endWait(ctx: Context, s: Session, why: "served" | "timeout" | "settled" | "gone"): void {
  const g = s.get;
  if (g === null) return;
  if (g.state === "parked") {
    unpark(ctx, s, g);
    if (why === "timeout") countMiss(ctx, true);
    if (why === "served") ctx.stats.getCmds++;
    g.state = "ready";
  }
  if (why === "settled" || why === "gone") s.get = null;
  if (why !== "gone") ctx.resume(s);
}

function unpark(ctx: Context, s: Session, g: PendingGet): void {
  ctx.waiters.remove(g.req.keys[g.index]!.queue, s);
  if (g.timer !== null) clearTimeout(g.timer);
  g.timer = null;
}

/** Serves the waiters of `queue` while it has messages for them, first come first served. */
export function serveWaiters(ctx: Context, queue: string): void {
  for (;;) {
    const s = ctx.waiters.first(queue);
    if (s === undefined) return;
    const g = s.get!;
    // If the store fails here, the waiter was given nothing and keeps waiting. (If the batch
    // fails later, after it was served, its reply is cut back: it ends with SERVER_ERROR.)
    const result = fetch(ctx, s, g.req.keys[g.index]!, g);
    if (result instanceof Promise) {
      // A store that answers later: this waiter tries, and waits again (at the back) on a miss.
      unpark(ctx, s, g);
      later(ctx, s, g, result);
      return;
    }
    if (!result) return;
    endWait(ctx, s, "served");
  }
}

/** The server is stopping: every parked get ends as if its time ran out. */
export function endAllWaits(ctx: Context): void {
  for (const s of ctx.sessions) if (s.get?.state === "parked") endWait(ctx, s, "timeout");
}

/** A reason to refuse the whole get before any key is served, or null. */
function refuse(ctx: Context, s: Session, keys: GetKey[]): string | null {
  // The common get, one plain key, has nothing to refuse: no need to look.
  if (keys.length === 1 && !keys[0]!.open && !keys[0]!.close && !keys[0]!.touch) return null;
  const opening = new Set<string>();
  let after = s.opens.size;
  let expired = false;
  for (const key of keys) {
    if (key.touch && !s.opens.has(key.queue)) return REPLY.NOTHING_OPEN;
    if (key.close && s.expired.has(key.queue)) expired = true;
    if (key.close && s.opens.has(key.queue)) after--;
    if (!key.open) continue;
    if ((s.opens.has(key.queue) && !key.close) || opening.has(key.queue)) return REPLY.ALREADY_OPEN;
    opening.add(key.queue);
    after++;
  }
  // The lease ran out and the message went back: confirming now would confirm nothing. The
  // error alone is the reply.
  if (expired) return REPLY.LEASE_EXPIRED;
  return after > ctx.config.maxOpen ? REPLY.TOO_MANY_OPEN : null;
}

/** The lease of an open message of `queue` in ms (open_timeout, else --open-timeout); 0 = none. */
const leaseMs = (ctx: Context, queue: string) => ctx.limits?.settings(queue).openTimeoutMs ?? ctx.config.openTimeoutMs;

const wantsMessage = (key: GetKey) => !key.abort && !key.touch && !(key.close && !key.open);

export function countMiss(ctx: Context, timedOut = false): void {
  ctx.stats.getCmds++;
  ctx.stats.getMisses++;
  if (timedOut) ctx.stats.getTimeouts++;
}

/** Serves one key; false if it wanted a message and the queue had none. */
function serveKey(ctx: Context, s: Session, key: GetKey, g: PendingGet): boolean | Promise<boolean> {
  const { store, stats, batch } = ctx;
  const open = s.opens.get(key.queue);
  if (key.touch) {
    // refuse() made sure the message is open. Another lease from now, undone with the batch.
    stats.getCmds++;
    const lease = s.leases.get(key.queue);
    if (lease !== undefined) {
      s.leases.set(key.queue, ctx.now() + leaseMs(ctx, key.queue));
      changeSession(ctx, s, () => s.opens.has(key.queue) && s.leases.set(key.queue, lease));
    }
    return true;
  }
  if (key.abort) {
    stats.getCmds++;
    if (open !== undefined) {
      batch.depends(g.reply);
      giveBack(ctx, s, key.queue, open, "abort", key.delay);
    }
    return true;
  }
  if (key.close) {
    const lease = s.leases.get(key.queue);
    s.leases.delete(key.queue);
    if (open !== undefined) {
      const openedIn = forget(s, key.queue);
      const mark = lossMark(ctx);
      changeSession(ctx, s, () => {
        // The confirm is undone: the message is open again, and a session that is gone meanwhile
        // (its end found nothing to give back) can no longer confirm it: it goes back. Unless this
        // node lost it meanwhile (open-lost.ts): then it is gone, as after a lease expiry.
        if (!stillHeld(ctx, mark, key.queue, open)) return void s.expired.add(key.queue);
        if (s.closed) return ctx.retry(() => stillHeld(ctx, mark, key.queue, open) && giveBackTaken(ctx, key.queue, open, openedIn));
        s.opens.set(key.queue, open);
        s.openedIn.set(key.queue, openedIn);
        if (lease !== undefined) s.leases.set(key.queue, lease);
      });
      batch.depends(g.reply);
      store.confirm(key.queue, open);
    }
    if (!key.open) {
      stats.getCmds++;
      return true;
    }
  }
  const served = fetch(ctx, s, key, g);
  if (served instanceof Promise) return served.then((hit) => (hit && void stats.getCmds++, hit));
  if (served) stats.getCmds++;
  return served;
}

/** Takes, opens or peeks at the head message for `key` and appends it to the reply. */
function fetch(ctx: Context, s: Session, key: GetKey, g: PendingGet): boolean | Promise<boolean> {
  const { store } = ctx;
  const now = ctx.now();
  const taken = key.open ? store.open(key.queue, now) : key.peek ? store.peek(key.queue, now) : store.dequeue(key.queue, now);
  if (taken instanceof Promise) {
    const epoch = ctx.batch.epoch(); // the batch the take is part of; it may commit before the answer
    return taken.then((message) => {
      if (s.get === g) {
        let hit = false;
        if (ctx.batch.within(epoch, () => (hit = append(ctx, s, key, g, message, now, epoch)))) return hit;
        // Its batch failed meanwhile: the store undid the take as well.
        throw new StoreError("Postgres: the batch was undone");
      }
      // The connection closed while the store answered: what it took goes back.
      if (message !== null && key.open) fromAnswer(ctx, () => giveBackTaken(ctx, key.queue, message.id, epoch));
      else if (message !== null && !key.peek) fromAnswer(ctx, () => restore(ctx, { queue: key.queue, message, takenIn: epoch }));
      return false;
    });
  }
  return append(ctx, s, key, g, taken, now, ctx.batch.epoch());
}

/** Puts a message that the take of batch `takenIn` got into the reply (and the session's opens, for /open). */
function append(ctx: Context, s: Session, key: GetKey, g: PendingGet, message: Message | null, now: number, takenIn: number): boolean {
  if (message === null) return false;
  // Lost before it reached the session (the node found itself reaped, open-lost.ts): a close
  // answers as after a lease expiry, as for the opens it forgot.
  if (key.open && ctx.store.holds?.(key.queue, message.id) === false) lostOpen(ctx, s, key.queue);
  else if (key.open) {
    s.opens.set(key.queue, message.id);
    s.openedIn.set(key.queue, takenIn);
    const wasExpired = s.expired.delete(key.queue); // a new open starts afresh
    const lease = leaseMs(ctx, key.queue);
    if (lease > 0) s.leases.set(key.queue, now + lease);
    changeSession(ctx, s, () => {
      s.opens.delete(key.queue);
      s.openedIn.delete(key.queue);
      s.leases.delete(key.queue);
      if (wasExpired) s.expired.add(key.queue);
    });
  }
  ctx.stats.getHits++;
  const reply = g.reply;
  ctx.batch.depends(reply);
  const id = g.req.withIds ? message.id : undefined;
  put(reply, valueHeader(key.key, message.flags, message.body.length, id));
  put(reply, message.body);
  put(reply, CRLF);
  reply.values++;
  if (!key.open && !key.peek) (reply.taken ??= []).push(key.queue, message, reply.pieces.length - 1);
  return true;
}

/** Parks key `g.index` until a message or its deadline; false if the deadline has passed. */
function park(ctx: Context, s: Session, key: GetKey, g: PendingGet): boolean {
  const now = ctx.now();
  if (g.deadline < 0) g.deadline = now + key.timeout;
  const left = g.deadline - now;
  if (left <= 0) return false;
  g.state = "parked";
  ctx.waiters.add(key.queue, s);
  g.timer = setTimeout(() => endWait(ctx, s, "timeout"), left);
  return true;
}

/**
 * Returns an open message to its queue: aborted, its connection gone, or its lease expired.
 * If the batch fails, the session gets it back; a session that is gone by then has its message
 * returned later, unless the open itself was undone (giveBackTaken).
 */
export function giveBack(ctx: Context, s: Session, queue: string, id: number, why: "abort" | "gone" | "expired", delayMs = 0): void {
  const lease = s.leases.get(queue);
  const openedIn = forget(s, queue);
  // The session is closed: nothing to restore, and the retry must follow the open's batch, so
  // that it never releases another session's later open of the same message (its open undone).
  if (why === "gone") return giveBackTaken(ctx, queue, id, openedIn);
  const wasExpired = s.expired.has(queue);
  if (why === "expired") s.expired.add(queue);
  const mark = lossMark(ctx);
  changeSession(ctx, s, () => {
    if (!stillHeld(ctx, mark, queue, id)) return void s.expired.add(queue); // lost meanwhile (open-lost.ts)
    if (s.closed) return ctx.retry(() => stillHeld(ctx, mark, queue, id) && giveBackTaken(ctx, queue, id, openedIn));
    s.opens.set(queue, id);
    s.openedIn.set(queue, openedIn);
    if (lease !== undefined) s.leases.set(queue, lease);
    if (why === "expired" && !wasExpired) s.expired.delete(queue);
  });
  // `abort/delay=`: hidden until due, so no waiter is served now (commands.ts checked the store has delays).
  if (deadLetter(ctx, queue, id)) return;
  if (delayMs > 0) ctx.store.delays!.release(queue, id, ctx.now() + delayMs, ctx.now());
  else if (ctx.store.release(queue, id)) serveWaiters(ctx, queue);
}

/** Moves a message opened max_deliveries times to its dead-letter queue (queue-limits.ts); true if it did. */
function deadLetter(ctx: Context, queue: string, id: number): boolean {
  const target = ctx.limits?.deadLetter(ctx, queue, id) ?? null;
  if (target === null) return false;
  serveWaiters(ctx, target);
  return true;
}

/**
 * The session's state changes in the open batch: `undo` puts it back if the batch fails, and the
 * session's later replies in the batch depend on it (see startGet).
 */
function changeSession(ctx: Context, s: Session, undo: () => void): void {
  ctx.batch.onUndo(undo);
  s.changedIn = ctx.batch.epoch();
}

/**
 * Releases an open of batch `takenIn` whose session is gone (it closed before the store answered,
 * or after it opened the message, or before a failed confirm or give-back was undone).
 */
function giveBackTaken(ctx: Context, queue: string, id: number, takenIn: number): void {
  giveBackTake(ctx, takenIn, () => {
    if (deadLetter(ctx, queue, id)) return;
    if (ctx.store.release(queue, id)) serveWaiters(ctx, queue);
  });
}

/** With --open-timeout or open_timeout: messages open longer than their lease go back to their queues. */
export function expireLeases(ctx: Context, now: number): void {
  for (const s of ctx.sessions) {
    for (const [queue, until] of s.leases) {
      if (until > now) continue;
      const id = s.opens.get(queue);
      if (id !== undefined) giveBack(ctx, s, queue, id, "expired");
      else s.leases.delete(queue);
    }
  }
}
