/**
 * The stress test's model of the server: every message it sent, what each reply says happened
 * to it, and the counters `stats queue` must show. It reads replies per connection, in order,
 * which is the order the server ran that connection's requests; across connections it assumes
 * nothing about order, so every check here holds whatever the interleaving:
 *   - a set answered STORED is stored; one answered SERVER_ERROR stored nothing, so it is never
 *     delivered;
 *   - a message is consumed (a plain get's VALUE, or a close answered END) at most once;
 *   - an open message is not handed to anyone while its holder surely still holds it;
 *   - every key yields at most one VALUE, in key order, with its exact key, flags and bytes;
 *   - a get whose reply holds a VALUE does not wait on a later /t= key: judged at checkpoints by
 *     the server's count of waits that ran out (stress-waits.ts), not by how long a reply took.
 * Leases make "still open" uncertain: a lease that started at or after the request was sent
 * cannot have expired before `sentAt + lease`, and a reply read before then was surely made
 * before. Past that, a reply may say either, and the model learns which from it.
 */
import { createWaits, type Waits } from "./stress-waits";
import { show, type KeySpec, type Req, type Reply, type Value } from "./stress-wire";

export const LEASE_EXPIRED = "CLIENT_ERROR the open message's lease expired; it is back in its queue";
export const ALREADY_OPEN = "CLIENT_ERROR this connection already has an open message on that queue";
/** Clock slack between client and server readings of the same clock (ms). */
const MARGIN_MS = 5;

export interface Msg {
  id: number;
  queue: string;
  flags: number;
  body: Buffer;
  /** The connection that set it, and its place among that connection's sets (FIFO check). */
  producer: number;
  pseq: number;
  step: number;
  state: "sent" | "stored" | "refused";
  consumed: number;
  /** Times handed out so far (opens and plain gets). */
  delivered: number;
  holder: { conn: number; hold: Hold } | null;
  /** What happened to it, as the replies said (the last few events, for failure messages). */
  history: string[];
}

interface Hold {
  msg: Msg;
  sentAt: number;
  receivedAt: number;
}

interface ConnModel {
  holds: Map<string, Hold>;
  /** Queues where the server may still hold "your lease expired" for the next close. */
  maybeExpired: Set<string>;
  live: boolean;
  sets: number;
}

export interface Counts {
  stored: number;
  refused: number;
  consumed: number;
  confirmed: number;
  opened: number;
  redelivered: number;
  peeked: number;
  leaseExpired: number;
  alreadyOpen: number;
  serverErrors: number;
  /** Gets that only take or peek, answered SERVER_ERROR. */
  failedReads: number;
}

export class Violation extends Error {}

/** What the model knows. */
interface State {
  lease: number;
  reasons: Set<string>;

  releasing: (conn: number, queue: string) => boolean;
  msgs: Map<number, Msg>;
  conns: Map<number, ConnModel>;
  queues: Map<string, { total: number; fetched: number; bytesIn: number; bytesOut: number }>;
  counts: Counts;
  waits: Waits;
  drainedIds: Set<number>;
  /** queue and producer → the last pseq the drain saw. */
  drainOrder: Map<string, number>;
  nextId: number;
}

const fail = (what: string): never => {
  throw new Violation(what);
};
const failOn = (m: Msg, what: string): never => fail(`${what}; history of m${m.id}: ${m.history.join("; ")}`);

function queueOf(st: State, name: string) {
  let c = st.queues.get(name);
  if (c === undefined) st.queues.set(name, (c = { total: 0, fetched: 0, bytesIn: 0, bytesOut: 0 }));
  return c;
}

function connOf(st: State, id: number): ConnModel {
  let c = st.conns.get(id);
  if (c === undefined) st.conns.set(id, (c = { holds: new Map(), maybeExpired: new Set(), live: true, sets: 0 }));
  return c;
}

function note(m: Msg, connId: number, req: Req | null, what: string): void {
  const by = `${what} by connection ${connId}${req === null ? "" : ` (${JSON.stringify(req.text)}, step ${req.step}, read at ${req.receivedAt})`}`;
  if (m.history.push(by) > 12) m.history.shift();
}

/** The hold surely had not expired when a reply read at `at` was made. */
const certain = (st: State, h: Hold, at: number) => st.lease === 0 || at < h.sentAt + st.lease - MARGIN_MS;

function serverError(st: State, line: string): boolean {
  if (!line.startsWith("SERVER_ERROR ")) return false;
  if (!st.reasons.has(line.slice(13))) fail(`SERVER_ERROR for a reason this phase does not cause: ${show(line)}`);
  st.counts.serverErrors++;
  return true;
}

function onSet(st: State, req: Req, line: string): void {
  const m = st.msgs.get(req.msg)!;
  note(m, m.producer, req, line);
  if (line === "STORED") {
    m.state = "stored";
    st.counts.stored++;
    queueOf(st, m.queue).total++;
    queueOf(st, m.queue).bytesIn += m.body.length;
  } else if (serverError(st, line)) {
    if (m.delivered > 0) failOn(m, `set answered ${line} but m${m.id} was delivered`);
    m.state = "refused";
    st.counts.refused++;
  } else fail(`a set answered ${show(line)}`);
}

/** The message a VALUE carries, checked byte for byte against what was set. */
function valueMsg(st: State, v: Value, k: KeySpec): Msg {
  const id = /^m(\d+):/.exec(v.body.toString("latin1", 0, 16))?.[1];
  const m = id === undefined ? undefined : st.msgs.get(Number(id));
  if (m === undefined) return fail(`VALUE ${v.key} carries no message that was set: ${show(v.body)}`);
  if (m.queue !== k.queue) fail(`VALUE ${v.key} carries m${m.id} of queue ${m.queue}`);
  if (m.flags !== v.flags || !m.body.equals(v.body)) fail(`m${m.id} came back changed: flags ${v.flags} (set ${m.flags}), ${v.body.length} bytes (set ${m.body.length})`);
  if (m.state === "refused") failOn(m, `m${m.id} was delivered, but its set was answered SERVER_ERROR`);
  return m;
}

/** Handing `m` to a connection is wrong while its holder surely still holds it. */
function checkNotHeld(st: State, m: Msg, connId: number, req: Req): void {
  const h = m.holder;
  if (h === null || !certain(st, h.hold, req.receivedAt)) return;
  if (h.conn !== connId) {
    if (h.hold.receivedAt >= req.sentAt) return; // the open may have come after this request ran
    if (st.releasing(h.conn, m.queue)) return;
  }
  failOn(m, `m${m.id} is open on connection ${h.conn} (read at ${h.hold.receivedAt}), yet was handed to connection ${connId}`);
}

function consume(st: State, m: Msg, how: string): void {
  if (++m.consumed > 1) failOn(m, `m${m.id} consumed twice (the second by ${how})`);
  st.counts.consumed++;
  queueOf(st, m.queue).fetched++;
  queueOf(st, m.queue).bytesOut += m.body.length;
}

function release(c: ConnModel, connId: number, queue: string, req: Req | null, why: string): void {
  const h = c.holds.get(queue);
  if (h === undefined) return;
  note(h.msg, connId, req, why);
  c.holds.delete(queue);
  if (h.msg.holder?.hold === h) h.msg.holder = null;
}

function hold(st: State, c: ConnModel, connId: number, m: Msg, req: Req): void {
  const h: Hold = { msg: m, sentAt: req.sentAt, receivedAt: req.receivedAt };
  c.holds.set(m.queue, h);
  c.maybeExpired.delete(m.queue);
  m.holder = { conn: connId, hold: h };
  st.counts.opened++;
}

/** A reply that is one error line: what it may mean, given what this connection holds. */
function onGetError(st: State, c: ConnModel, connId: number, req: Req, line: string): void {
  const keys = req.keys!;
  if (serverError(st, line)) {
    if (keys.every((k) => k.mode === "plain" || k.mode === "peek")) st.counts.failedReads++;
    st.waits.unknown(req);
    return; // the batch was undone: nothing changed
  }
  if (line === ALREADY_OPEN) {
    if (!keys.some((k) => k.mode === "open" && c.holds.has(k.queue))) fail(`${line}, with nothing open on those queues`);
    st.counts.alreadyOpen++;
    return;
  }
  if (line !== LEASE_EXPIRED) fail(`unexpected ${show(line)}`);
  const closes = keys.filter((k) => k.mode === "close" || k.mode === "closeopen");
  const explained = closes.some((k) => {
    const h = c.holds.get(k.queue);
    return c.maybeExpired.has(k.queue) || (h !== undefined && !certain(st, h, req.receivedAt));
  });
  if (!explained) fail(`${line}, though no lease could have run out`);
  st.counts.leaseExpired++;
  for (const k of closes) {
    release(c, connId, k.queue, req, "lease expired (close said)");
    c.maybeExpired.delete(k.queue);
  }
}

function onGet(st: State, connId: number, req: Req, values: Value[], end: string): void {
  const c = connOf(st, connId);
  if (end !== "END") return onGetError(st, c, connId, req, end);
  const keys = req.keys!;
  // Each VALUE belongs to the next key it names: keys in order, at most one VALUE each.
  const got = new Array<Value | null>(keys.length).fill(null);
  let ki = 0;
  for (const v of values) {
    while (ki < keys.length && keys[ki]!.key !== v.key) ki++;
    if (ki === keys.length) fail(`VALUE ${v.key}: not a key of the request, or not in order, or twice`);
    if (keys[ki]!.mode === "close" || keys[ki]!.mode === "abort") fail(`VALUE ${v.key} for a key that takes nothing`);
    got[ki++] = v;
  }
  st.waits.answered(req, got);
  keys.forEach((k, i) => serveKey(st, c, connId, req, k, got[i]!));
}

function serveKey(st: State, c: ConnModel, connId: number, req: Req, k: KeySpec, v: Value | null): void {
  const h = c.holds.get(k.queue);
  if (k.mode === "abort") {
    if (h !== undefined && !certain(st, h, req.receivedAt)) c.maybeExpired.add(k.queue);
    return release(c, connId, k.queue, req, "aborted");
  }
  if (k.mode === "close" || k.mode === "closeopen") {
    // END, not the lease error: the close confirmed what was open (if anything was).
    if (h !== undefined) {
      consume(st, h.msg, `the close of connection ${connId}`);
      st.counts.confirmed++;
      release(c, connId, k.queue, req, "confirmed");
    }
    c.maybeExpired.delete(k.queue);
  }
  if (k.mode === "open" && h !== undefined) {
    if (certain(st, h, req.receivedAt)) fail(`${k.key} was served while m${h.msg.id} was open on that queue: expected ${ALREADY_OPEN}`);
    release(c, connId, k.queue, req, "lease expired (open said)"); // it went back
    c.maybeExpired.add(k.queue);
  }
  if (v === null) return;
  const m = valueMsg(st, v, k);
  checkNotHeld(st, m, connId, req);
  note(m, connId, req, k.mode === "plain" ? "taken" : k.mode === "peek" ? "peeked" : "handed out");
  if (k.mode === "peek") {
    st.counts.peeked++;
    return;
  }
  if (m.delivered++ > 0) st.counts.redelivered++;
  if (k.mode === "plain") consume(st, m, `a get on connection ${connId}`);
  else hold(st, c, connId, m, req);
}

/** A message the final drain took: stored, never consumed, taken once, FIFO per producer. */
function onDrained(st: State, v: Value, queue: string): void {
  const m = valueMsg(st, v, { key: queue, queue, mode: "plain", t: 0 });
  if (m.state !== "stored") failOn(m, `the drain found m${m.id}, whose set was never answered STORED`);
  if (m.consumed > 0 || st.drainedIds.has(m.id)) failOn(m, `the drain found m${m.id}, which was consumed already`);
  const key = `${queue} ${m.producer}`;
  if ((st.drainOrder.get(key) ?? -1) > m.pseq) fail(`the drain found m${m.id} after a later message of connection ${m.producer} on ${queue}`);
  st.drainOrder.set(key, m.pseq);
  st.drainedIds.add(m.id);
}

/** After the drain: every message acknowledged STORED was consumed or drained. */
function lost(st: State): string[] {
  const out: string[] = [];
  for (const m of st.msgs.values()) {
    // A set never answered (the server stopped first) stored nothing, or the drain says otherwise.
    if (m.state === "stored" && m.consumed === 0 && !st.drainedIds.has(m.id)) out.push(`m${m.id} on ${m.queue} is lost; its history: ${m.history.join("; ")}`);
  }
  return out;
}

/** `stats queue <q>`'s first five fields as the model has them. */
function expected(st: State, queue: string): string {
  const c = queueOf(st, queue);
  let open = 0;
  for (const m of st.conns.values()) if (m.live && m.holds.has(queue)) open++;
  return `items ${c.total - c.fetched} bytes ${c.bytesIn - c.bytesOut} total ${c.total} fetched ${c.fetched} open ${open}`;
}

/**
 * `releasing(conn, queue)`: whether that connection may be giving back what it holds on the
 * queue right now (an abort or close in flight, or a quit or disconnect under way).
 */
export function createModel(
  { lease, reasons }: { lease: number; reasons: string[] },
  releasing: (conn: number, queue: string) => boolean,
) {
  const counts: Counts = {
    stored: 0, refused: 0, consumed: 0, confirmed: 0, opened: 0, redelivered: 0, peeked: 0, leaseExpired: 0, alreadyOpen: 0, serverErrors: 0, failedReads: 0,
  };
  const st: State = {
    lease, reasons: new Set(reasons), releasing, msgs: new Map(), conns: new Map(), queues: new Map(), counts, waits: createWaits(), drainedIds: new Set(), drainOrder: new Map(), nextId: 0,
  };
  return {
    counts,
    /** A fresh message to set: its body starts with its id, so any VALUE names it. */
    message(queue: string, size: number, producer: number, step: number, rnd: () => number): Msg {
      const id = ++st.nextId;
      const head = `m${id}:`;
      const body = Buffer.alloc(Math.max(size, head.length), String.fromCharCode(97 + (id % 26)));
      body.write(head, 0, "latin1");
      const flags = Math.floor(rnd() * 2 ** 32) >>> 0;
      const pseq = connOf(st, producer).sets++;
      const m: Msg = { id, queue, flags, body, producer, pseq, step, state: "sent", consumed: 0, delivered: 0, holder: null, history: [] };
      st.msgs.set(id, m);
      return m;
    },
    reply(connId: number, req: Req, reply: Reply): void {
      if (reply.kind === "get") onGet(st, connId, req, reply.values, reply.end);
      else if (reply.kind === "line" && req.msg > 0) onSet(st, req, reply.line);
      else if (reply.kind === "stats" && req.text.startsWith("stats queue ")) checkStatsFormat(reply.lines);
    },
    /** The connection is gone: what it held is back in its queues, and `unanswered` never will be. */
    gone(connId: number, unanswered: Req[] = []): void {
      st.waits.abandon(unanswered);
      const c = connOf(st, connId);
      for (const queue of [...c.holds.keys()]) release(c, connId, queue, null, "given back (disconnected)");
      c.live = false;
    },
    /** Holds that a request read at `at` could find expired, as [connection, queue]. */
    uncertain(at: number): [number, string][] {
      const out: [number, string][] = [];
      for (const [id, c] of st.conns) for (const [queue, h] of c.holds) if (c.live && !certain(st, h, at)) out.push([id, queue]);
      return out;
    },
    expected: (queue: string) => expected(st, queue),
    /** Null if the server's `stats` get_timeouts fits every reply read; else what is wrong. */
    timeouts: (n: number) => st.waits.check(n),
    drained: (v: Value, queue: string) => onDrained(st, v, queue),
    lost: () => lost(st),
  };
}

export type Model = ReturnType<typeof createModel>;

/** `stats queue <q>` lists these six in this order (more may follow), or nothing for no queue. */
function checkStatsFormat(lines: string[]): void {
  const names = lines.slice(0, 6).map((l) => l.split(" ")[1]);
  const want = ["items", "bytes", "total", "fetched", "open", "oldest_age_ms"];
  if (lines.length > 0 && names.join() !== want.join()) throw new Violation(`stats queue gave ${show(lines.join("\n"))}`);
}

/** `stats queue <q>`'s reply in the model's form (see expected()). */
export function statsLine(lines: string[]): string {
  if (lines.length === 0) return "items 0 bytes 0 total 0 fetched 0 open 0";
  return lines.slice(0, 5).map((l) => l.slice(5)).join(" ");
}
