/**
 * `get` and `gets` with Kestrel's options: plain (take the head), /peek, /open, /close,
 * /abort and /t=<ms>. Each key is served in order into one reply that ends with END.
 * A key with /t= on an empty queue parks the session in the waiters of that queue; a set
 * (or a message coming back) serves the first waiter inside the same batch, so the
 * handover is as durable as any get. While a session waits, it takes no further request,
 * which keeps its replies in order.
 */
import type { Context } from "./context";
import { REPLY, valueHeader } from "./protocol/reply";
import type { GetKey, Request } from "./protocol/types";
import type { PendingGet, Reply, Session } from "./session";
import type { Message } from "./store/store";

const CRLF = "\r\n";

/** Runs a get; false if it now waits for a message (see resumeGet). */
export function startGet(ctx: Context, s: Session, req: Extract<Request, { kind: "get" }>): boolean {
  const refusal = checkOpens(ctx, s, req.keys);
  if (refusal !== null) {
    s.held.push({ pieces: [refusal], complete: true });
    return true;
  }
  const reply: Reply = { pieces: [], complete: false };
  s.held.push(reply);
  s.waiting = { req, index: 0, reply, timer: null, done: false };
  return resumeGet(ctx, s);
}

/** Goes on with the session's get from its current key; false if it waits again. */
export function resumeGet(ctx: Context, s: Session): boolean {
  const pending = s.waiting!;
  const { keys } = pending.req;
  ctx.batch.depends(pending.reply);
  while (pending.index < keys.length) {
    const key = keys[pending.index]!;
    if (!pending.done) {
      const served = serveKey(ctx, s, key, pending);
      if (!served && key.timeout > 0 && wantsMessage(key)) {
        wait(ctx, s, key, pending);
        return false;
      }
    }
    pending.done = false;
    pending.index++;
  }
  pending.reply.pieces.push(REPLY.END);
  pending.reply.complete = true;
  s.waiting = null;
  return true;
}

/** Serves the waiters of `queue` while it has messages for them, first come first served. */
export function serveWaiters(ctx: Context, queue: string): void {
  for (;;) {
    const s = ctx.waiters.first(queue);
    if (s === undefined) return;
    const pending = s.waiting!;
    const key = pending.req.keys[pending.index]!;
    ctx.batch.depends(pending.reply);
    let served: boolean;
    try {
      served = fetch(ctx, s, key, pending);
    } catch (e) {
      // The batch will be undone and this reply become SERVER_ERROR: the waiter's get ends here.
      stopWaiting(ctx, s, queue);
      pending.reply.complete = true;
      s.waiting = null;
      ctx.resume(s);
      throw e;
    }
    if (!served) return;
    stopWaiting(ctx, s, queue);
    pending.done = true;
    ctx.resume(s);
  }
}

/** Takes s out of the waiters of `queue` and cancels the timeout of its blocking get. */
function stopWaiting(ctx: Context, s: Session, queue: string): void {
  const pending = s.waiting!;
  ctx.waiters.remove(queue, s);
  if (pending.timer !== null) clearTimeout(pending.timer);
  pending.timer = null;
}

/** A connection ended: its open messages go back to their queues, its wait is dropped. */
export function endSession(ctx: Context, s: Session): void {
  s.closed = true;
  const pending = s.waiting;
  if (pending !== null) {
    stopWaiting(ctx, s, pending.req.keys[pending.index]!.queue);
    s.waiting = null;
  }
  for (const [queue, id] of s.opens) giveBack(ctx, s, queue, id);
}

/** With --open-timeout: messages open longer than their lease go back to their queues. */
export function expireLeases(ctx: Context, now: number): void {
  for (const s of ctx.sessions) {
    for (const [queue, until] of s.leases) {
      if (until > now) continue;
      const id = s.opens.get(queue);
      if (id !== undefined) giveBack(ctx, s, queue, id);
      s.expired.add(queue);
    }
  }
}

function giveBack(ctx: Context, s: Session, queue: string, id: number): void {
  s.opens.delete(queue);
  s.leases.delete(queue);
  if (ctx.store.release(queue, id)) serveWaiters(ctx, queue);
}

/** A reason to refuse the whole get before any key is served, or null. */
function checkOpens(ctx: Context, s: Session, keys: GetKey[]): string | null {
  const opening = new Set<string>();
  let after = s.opens.size;
  for (const key of keys) {
    if (key.close && s.opens.has(key.queue)) after--;
    if (!key.open) continue;
    if ((s.opens.has(key.queue) && !key.close) || opening.has(key.queue)) return REPLY.ALREADY_OPEN;
    opening.add(key.queue);
    after++;
  }
  return after > ctx.config.maxOpen ? REPLY.TOO_MANY_OPEN : null;
}

const wantsMessage = (key: GetKey) => !key.abort && !(key.close && !key.open);

/** Serves one key; false if it wanted a message and the queue had none. */
function serveKey(ctx: Context, s: Session, key: GetKey, pending: PendingGet): boolean {
  const { store, stats, batch } = ctx;
  const open = s.opens.get(key.queue);
  if (key.abort) {
    stats.getCmds++;
    if (open !== undefined) giveBack(ctx, s, key.queue, open);
    return true;
  }
  if (key.close) {
    s.leases.delete(key.queue);
    if (s.expired.delete(key.queue)) {
      // The lease ran out and the message went back; confirming now would confirm nothing.
      pending.reply.pieces.push(REPLY.LEASE_EXPIRED);
    } else if (open !== undefined) {
      s.opens.delete(key.queue);
      batch.onUndo(() => s.opens.set(key.queue, open));
      store.confirm(key.queue, open);
    }
    if (!key.open) {
      stats.getCmds++;
      return true;
    }
  }
  const served = fetch(ctx, s, key, pending);
  if (served || key.timeout <= 0) {
    stats.getCmds++;
    if (!served) stats.getMisses++;
  }
  return served;
}

/** Takes, opens or peeks at the head message for `key` and appends it to the reply. */
function fetch(ctx: Context, s: Session, key: GetKey, pending: PendingGet): boolean {
  const { store } = ctx;
  const now = ctx.now();
  let message: Message | null;
  if (key.open) {
    message = store.open(key.queue, now);
    if (message !== null) {
      const id = message.id;
      s.opens.set(key.queue, id);
      if (ctx.config.openTimeoutMs > 0) s.leases.set(key.queue, now + ctx.config.openTimeoutMs);
      ctx.batch.onUndo(() => {
        s.opens.delete(key.queue);
        s.leases.delete(key.queue);
      });
    }
  } else if (key.peek) {
    message = store.peek(key.queue, now);
  } else {
    message = store.dequeue(key.queue, now);
  }
  if (message === null) return false;
  ctx.stats.getHits++;
  const id = pending.req.withIds ? message.id : undefined;
  pending.reply.pieces.push(valueHeader(key.key, message.flags, message.body.length, id), message.body, CRLF);
  return true;
}

function wait(ctx: Context, s: Session, key: GetKey, pending: PendingGet): void {
  ctx.waiters.add(key.queue, s);
  pending.timer = setTimeout(() => {
    pending.timer = null;
    ctx.waiters.remove(key.queue, s);
    ctx.stats.getCmds++;
    ctx.stats.getMisses++;
    pending.done = true;
    ctx.resume(s);
  }, key.timeout);
}
