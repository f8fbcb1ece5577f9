/**
 * What the stress test sends: each step picks an action and a connection from the seeded
 * generator. The request stream depends on the seed alone, never on what the replies said, so
 * `--seed` replays it (the server's interleaving still varies with timing). Actions that must
 * not lose a reply in flight (a disconnect) first wait for the replies that matter.
 */
import type { Model } from "./stress-model";
import { safe, type KeySpec, type Mode, type Req, type StressConn } from "./stress-wire";

export const QUEUES = ["q0", "q1", "q2", "q3"];
/** Seldom set, so that blocking gets on it really wait (behind pipelines, on slow readers). */
export const WAITQ = "w";
/** Holds one large message that slow readers peek at, so their unsent output grows fast. */
export const BIG = "big";
export const BIG_BYTES = 256 * 1024;
/** Every queue the model counts. */
export const ALL_QUEUES = [...QUEUES, WAITQ, BIG];

/** What an action needs from the engine (stress.ts). */
export interface Ctx {
  rnd: () => number;
  step: number;
  model: Model;
  conns: StressConn[];
  /** The queue each connection last sent an open for: closes and aborts favour it. */
  lastOpen: Map<number, string>;
  bodySize: () => number;
  /** Waits until the connection has nothing in flight that `keep` rejects. */
  settle(c: StressConn, keep?: (r: Req) => boolean): Promise<void>;
  /** Replaces connection `i` with a fresh one (after a disconnect or quit). */
  replace(i: number): Promise<void>;
  tally(action: string): void;
}

const int = (ctx: Ctx, lo: number, hi: number) => lo + Math.floor(ctx.rnd() * (hi - lo + 1));
const pick = <T>(ctx: Ctx, xs: T[]): T => xs[Math.floor(ctx.rnd() * xs.length)]!;
const SUFFIX: Record<Mode, string> = { plain: "", peek: "/peek", open: "/open", close: "/close", abort: "/abort", closeopen: "/close/open" };

export function keySpec(queue: string, mode: Mode, t = 0): KeySpec {
  return { key: queue + SUFFIX[mode] + (t > 0 ? `/t=${t}` : ""), queue, mode, t };
}

function req(ctx: Ctx, expect: Req["expect"], text: string, keys: KeySpec[] | null, msg = 0): Req {
  return { step: ctx.step, text, expect, keys, msg, sentAt: Date.now(), startAt: 0, receivedAt: 0, paused: false, reply: null };
}

/** A set of a fresh message, as a request and its bytes. */
export function setOf(ctx: Ctx, c: StressConn, queue: string, size: number): [Req, Buffer] {
  const m = ctx.model.message(queue, size, c.id, ctx.step, ctx.rnd);
  const line = `set ${queue} ${m.flags} 0 ${m.body.length}\r\n`;
  return [req(ctx, "line", line.trim() + ` (m${m.id})`, null, m.id), Buffer.concat([Buffer.from(line), m.body, Buffer.from("\r\n")])];
}

export function getOf(ctx: Ctx, keys: KeySpec[]): [Req, Buffer] {
  const line = `get ${keys.map((k) => k.key).join(" ")}`;
  return [req(ctx, "get", line, keys), Buffer.from(line + "\r\n")];
}

export function statsOf(ctx: Ctx, what: string): [Req, Buffer] {
  return [req(ctx, "stats", what, null), Buffer.from(what + "\r\n")];
}

export function send(c: StressConn, items: [Req, Buffer][]): void {
  c.send(items.map(([r]) => r), Buffer.concat(items.map(([, b]) => b)));
}

const wait = (ctx: Ctx) => (ctx.rnd() < 0.4 ? int(ctx, 20, 300) : 0);
const waitQueue = (ctx: Ctx) => (ctx.rnd() < 0.5 ? WAITQ : pick(ctx, QUEUES));
const get1 = (ctx: Ctx, c: StressConn, k: KeySpec) => send(c, [getOf(ctx, [k])]);
/** The queue a close or abort goes to: mostly the one this connection last opened. */
const openQueue = (ctx: Ctx, c: StressConn) => (ctx.rnd() < 0.8 ? (ctx.lastOpen.get(c.id) ?? pick(ctx, QUEUES)) : pick(ctx, QUEUES));

type Action = (ctx: Ctx, c: StressConn, i: number) => void | Promise<void>;

export const ACTIONS: Record<string, Action> = {
  set(ctx, c) {
    // Sometimes a burst into one queue: several sets in one batch serve its waiters in one go.
    // WAITQ gets few, so that it is mostly empty and gets on it really wait.
    const burst = ctx.rnd() < 0.3 ? pick(ctx, QUEUES) : null;
    const queue = () => burst ?? (ctx.rnd() < 0.04 ? WAITQ : pick(ctx, QUEUES));
    send(c, Array.from({ length: int(ctx, 1, 6) }, () => setOf(ctx, c, queue(), ctx.bodySize())));
  },
  get(ctx, c) {
    const t = wait(ctx);
    get1(ctx, c, keySpec(t > 0 ? waitQueue(ctx) : pick(ctx, QUEUES), "plain", t));
  },
  multi(ctx, c) {
    const keys = Array.from({ length: int(ctx, 2, 3) }, () => keySpec(pick(ctx, QUEUES), ctx.rnd() < 0.2 ? "peek" : "plain"));
    // A long wait on the last key: a reply that already holds a VALUE must not wait for it.
    const last = keys.length - 1;
    if (ctx.rnd() < 0.6) keys[last] = keySpec(waitQueue(ctx), keys[last]!.mode, ctx.rnd() < 0.5 ? 1500 : int(ctx, 20, 300));
    send(c, [getOf(ctx, keys)]);
  },
  open(ctx, c) {
    const queue = pick(ctx, QUEUES);
    ctx.lastOpen.set(c.id, queue);
    get1(ctx, c, keySpec(queue, "open", wait(ctx)));
  },
  multiopen(ctx, c) {
    const [a, b] = [pick(ctx, QUEUES), pick(ctx, QUEUES)];
    if (a !== b) send(c, [getOf(ctx, [keySpec(a, "open"), keySpec(b, "open", wait(ctx))])]);
  },
  closeopen: (ctx, c) => get1(ctx, c, keySpec(openQueue(ctx, c), "closeopen", wait(ctx))),
  close: (ctx, c) => get1(ctx, c, keySpec(openQueue(ctx, c), "close")),
  abort: (ctx, c) => get1(ctx, c, keySpec(openQueue(ctx, c), "abort")),
  peek: (ctx, c) => get1(ctx, c, keySpec(pick(ctx, QUEUES), "peek")),
  stats: (ctx, c) => send(c, [statsOf(ctx, `stats queue ${pick(ctx, QUEUES)}`)]),
  /** More requests in one write than one turn runs (1024), a blocking get at the end. */
  pipeline(ctx, c) {
    const items: [Req, Buffer][] = [];
    for (let n = int(ctx, 1100, 2000); n > 0; n--) {
      const r = ctx.rnd();
      const queue = pick(ctx, QUEUES);
      if (r < 0.35) items.push(setOf(ctx, c, queue, int(ctx, 1, 100)));
      else items.push(getOf(ctx, [keySpec(queue, r < 0.75 ? "plain" : "peek")]));
    }
    items.push(getOf(ctx, [keySpec(WAITQ, "plain", int(ctx, 100, 1000))]));
    send(c, items);
    ctx.tally("pipelined requests");
  },
  /** A client that stops reading: megabytes of peeks pile up, then maybe a blocking get. */
  slow(ctx, c) {
    c.pause();
    // 6 to 12 MB: past the server's 4 MB of unsent output and the socket buffers, so the server
    // stops reading this client while its get waits, and takes it up again once it reads.
    const items = Array.from({ length: int(ctx, 24, 48) }, () => getOf(ctx, [keySpec(BIG, "peek")]));
    if (ctx.rnd() < 0.7) items.push(getOf(ctx, [keySpec(WAITQ, "plain", int(ctx, 300, 2000))]));
    send(c, items);
  },
  /** A slow reader catches up while its get may still wait, and a burst of sets arrives for it. */
  resume(ctx, c) {
    const slow = ctx.conns.find((x) => x.paused);
    if (slow === undefined) return;
    slow.resume();
    if (c !== slow && ctx.rnd() < 0.5) send(c, Array.from({ length: int(ctx, 2, 4) }, () => setOf(ctx, c, WAITQ, int(ctx, 1, 100))));
  },
  async wait(ctx, c) {
    c.resume();
    await ctx.settle(c);
  },
  /**
   * The client vanishes. Only replies that cannot change what is stored may be in flight (opens,
   * peeks, aborts: whatever they held goes back); a set or plain get in flight would make
   * "acknowledged" or "consumed" unknowable, so those are answered first.
   */
  async disconnect(ctx, c, i) {
    c.resume();
    await ctx.settle(c, safe);
    c.leaving = "destroy";
    c.client.close();
    ctx.model.gone(c.id, c.pending);
    await ctx.replace(i);
  },
  /** quit: every request before it is answered, then the server closes. */
  async quit(ctx, c, i) {
    c.resume();
    c.leaving = "quit";
    c.client.write("quit\r\n");
    await c.until(() => c.closed, 20_000 + pendingWait(c), `connection ${c.id} to close after quit`);
    ctx.model.gone(c.id);
    await ctx.replace(i);
  },
};

/** The longest the requests in flight may legitimately wait (their /t= added up). */
export function pendingWait(c: StressConn): number {
  let ms = 0;
  for (const r of c.pending) ms += Math.max(0, ...(r.keys ?? []).map((k) => k.t));
  return ms;
}

export type Mix = Partial<Record<keyof typeof ACTIONS | "checkpoint", number>>;

export const DEFAULT_MIX: Mix = {
  set: 30, get: 10, multi: 7, open: 8, multiopen: 2, closeopen: 5, close: 5, abort: 4, peek: 4, stats: 2,
  pipeline: 1, slow: 1.5, resume: 3, wait: 12, disconnect: 1.5, quit: 1, checkpoint: 0.7,
};

/** Picks an action by weight. */
export function choose(rnd: () => number, mix: Mix): string {
  const entries = Object.entries(mix) as [string, number][];
  let r = rnd() * entries.reduce((s, [, w]) => s + w, 0);
  for (const [name, w] of entries) if ((r -= w) < 0) return name;
  return entries[entries.length - 1]![0];
}
