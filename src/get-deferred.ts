/**
 * Plain gets on a store that answers at commit (Postgres): the connection runs on past them, and
 * each reply is filled in its place when the store answers (docs/design.md "Running past a get").
 */
import type { Context } from "./context";
import { countMiss } from "./get";
import { fromAnswer, restore } from "./give-back";
import { REPLY, valueHeader } from "./protocol/reply";
import type { Request } from "./protocol/types";
import { put, settle, type Reply, type Session } from "./session";

const CRLF = "\r\n";

/**
 * Plain gets a connection may leave unanswered while it goes on: each holds one reply of at most
 * one message (memory: MAX_DEFERRED x --max-body per connection, beyond what it has unsent).
 */
const MAX_DEFERRED = 16;

/** A get of one key that only takes or peeks, on a store that answers at commit, within the limit. */
export function deferrable(ctx: Context, s: Session, req: Extract<Request, { kind: "get" }>): boolean {
  if (ctx.store.answersAtCommit !== true || req.keys.length !== 1 || s.deferred >= MAX_DEFERRED) return false;
  const key = req.keys[0]!;
  return !key.open && !key.close && !key.abort && !key.touch && key.timeout <= 0 && key.delay === 0;
}

/**
 * Runs a deferrable get without stopping the connection: its take joins the batch (after this
 * session's earlier ops, before its later ones: store.actor), its reply waits in `held`, empty and
 * incomplete, so nothing after it is sent before it, and is filled when the store answers. It
 * belongs to the take's batch (depends now, within() then): a failure of that batch settles it.
 */
export function deferGet(ctx: Context, s: Session, req: Extract<Request, { kind: "get" }>, reply: Reply): boolean {
  const key = req.keys[0]!;
  const now = ctx.now();
  const epoch = ctx.batch.epoch();
  ctx.batch.depends(reply);
  const taken = key.peek ? ctx.store.peek(key.queue, now) : ctx.store.dequeue(key.queue, now);
  s.deferred++;
  void Promise.resolve(taken).then(
    (message) => {
      s.deferred--;
      if (reply.complete) return; // its batch failed, and the take with it
      if (s.closed) {
        // Nobody will read it: what it took goes back.
        if (message !== null && !key.peek) fromAnswer(ctx, () => restore(ctx, { queue: key.queue, message, takenIn: epoch }));
        return;
      }
      const filled = ctx.batch.within(epoch, () => {
        if (message === null) countMiss(ctx);
        else {
          ctx.stats.getCmds++;
          ctx.stats.getHits++;
          ctx.batch.depends(reply);
          put(reply, valueHeader(key.key, message.flags, message.body.length, req.withIds ? message.id : undefined));
          put(reply, message.body);
          put(reply, CRLF);
          reply.values++;
          if (!key.peek) (reply.taken ??= []).push(key.queue, message, reply.pieces.length - 1);
        }
        put(reply, REPLY.END);
        reply.complete = true;
      });
      if (!filled) settle(reply, null, "the batch was undone");
      ctx.resume(s); // its replies may leave with the next commit
    },
    (e) => {
      s.deferred--;
      ctx.batch.fail(e, epoch);
      if (!reply.complete) settle(reply, null, e instanceof Error ? e.message : String(e));
      if (!s.closed) ctx.resume(s);
    },
  );
  return true;
}

