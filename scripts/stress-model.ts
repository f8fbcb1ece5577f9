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
 *   - a get whose reply holds a VALUE does not wait on a later /t= key.
 * Leases make "still open" uncertain: a lease that started at or after the request was sent
 * cannot have expired before `sentAt + lease`, and a reply read before then was surely made
 * before. Past that, a reply may say either, and the model learns which from it.
 */
import { show, type KeySpec, type Req, type Reply, type Value } from "./stress-wire";

export const LEASE_EXPIRED = "CLIENT_ERROR the open message's lease expired; it is back in its queue";
export const ALREADY_OPEN = "CLIENT_ERROR this connection already has an open message on that queue";
/** Timeouts at least this long are checked for a wait that should not have happened. */
export const LONG_WAIT_MS = 1000;
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
}

export class Violation extends Error {}

/**
 * `releasing(conn, queue)`: whether that connection may be giving back what it holds on the
 * queue right now (an abort or close in flight, or a quit or disconnect under way).
 */
export function createModel(lease: number, reasons: Set<string>, releasing: (conn: number, queue: string) => boolean) {
  const msgs = new Map<number, Msg>();
  const conns = new Map<number, ConnModel>();
  const queues = new Map<string, { total: number; fetched: number; bytesIn: number; bytesOut: number }>();
  const counts: Counts = {
    stored: 0, refused: 0, consumed: 0, confirmed: 0, opened: 0, redelivered: 0, peeked: 0, leaseExpired: 0, alreadyOpen: 0, serverErrors: 0,
  };
  const drainedIds = new Set<number>();
  const drainOrder = new Map<string, number>();
  let nextId = 0;

  const fail = (what: string): never => {
    throw new Violation(what);
  };
  const q = (name: string) => {
    let c = queues.get(name);
    if (c === undefined) queues.set(name, (c = { total: 0, fetched: 0, bytesIn: 0, bytesOut: 0 }));
    return c;
  };
  const conn = (id: number) => {
    let c = conns.get(id);
    if (c === undefined) conns.set(id, (c = { holds: new Map(), maybeExpired: new Set(), live: true, sets: 0 }));
    return c;
  };
  const note = (m: Msg, connId: number, req: Req | null, what: string) => {
    if (m.history.push(`${what} by connection ${connId}${req === null ? "" : ` (${JSON.stringify(req.text)}, step ${req.step}, read at ${req.receivedAt})`}`) > 12) m.history.shift();
  };
  const failOn = (m: Msg, what: string): never => fail(`${what}; history of m${m.id}: ${m.history.join("; ")}`);
  /** The hold surely had not expired when a reply read at `at` was made. */
  const certain = (h: Hold, at: number) => lease === 0 || at < h.sentAt + lease - MARGIN_MS;

  function message(queue: string, size: number, producer: number, step: number, rnd: () => number): Msg {
    const id = ++nextId;
    const head = `m${id}:`;
    const body = Buffer.alloc(Math.max(size, head.length), String.fromCharCode(97 + (id % 26)));
    body.write(head, 0, "latin1");
    const m: Msg = {
      id, queue, flags: Math.floor(rnd() * 2 ** 32) >>> 0, body, producer, pseq: conn(producer).sets++, step,
      state: "sent", consumed: 0, delivered: 0, holder: null, history: [],
    };
    msgs.set(id, m);
    return m;
  }

  function serverError(line: string): boolean {
    if (!line.startsWith("SERVER_ERROR ")) return false;
    if (!reasons.has(line.slice(13))) fail(`SERVER_ERROR for a reason this phase does not cause: ${show(line)}`);
    counts.serverErrors++;
    return true;
  }

  function onSet(req: Req, line: string): void {
    const m = msgs.get(req.msg)!;
    note(m, m.producer, req, line);
    if (line === "STORED") {
      m.state = "stored";
      counts.stored++;
      q(m.queue).total++;
      q(m.queue).bytesIn += m.body.length;
    } else if (serverError(line)) {
      if (m.delivered > 0) failOn(m, `set answered ${line} but m${m.id} was delivered`);
      m.state = "refused";
      counts.refused++;
    } else fail(`a set answered ${show(line)}`);
  }

  /** The message a VALUE carries, checked byte for byte against what was set. */
  function valueMsg(v: Value, k: KeySpec): Msg {
    const id = /^m(\d+):/.exec(v.body.toString("latin1", 0, 16))?.[1];
    const m = id === undefined ? undefined : msgs.get(Number(id));
    if (m === undefined) return fail(`VALUE ${v.key} carries no message that was set: ${show(v.body)}`);
    if (m.queue !== k.queue) fail(`VALUE ${v.key} carries m${m.id} of queue ${m.queue}`);
    if (m.flags !== v.flags || !m.body.equals(v.body)) fail(`m${m.id} came back changed: flags ${v.flags} (set ${m.flags}), ${v.body.length} bytes (set ${m.body.length})`);
    if (m.state === "refused") failOn(m, `m${m.id} was delivered, but its set was answered SERVER_ERROR`);
    return m;
  }

  /** Handing `m` to `c` is wrong if its holder surely still holds it (and the holder is not `c` re-reading it). */
  function checkNotHeld(m: Msg, connId: number, req: Req): void {
    const h = m.holder;
    if (h === null || !certain(h.hold, req.receivedAt)) return;
    if (h.conn !== connId) {
      if (h.hold.receivedAt >= req.sentAt) return; // the open may have come after this request ran
      if (releasing(h.conn, m.queue)) return;
    }
    failOn(m, `m${m.id} is open on connection ${h.conn} (read at ${h.hold.receivedAt}), yet was handed to connection ${connId}`);
  }

  function consume(m: Msg, how: string): void {
    if (++m.consumed > 1) failOn(m, `m${m.id} consumed twice (the second by ${how})`);
    counts.consumed++;
    q(m.queue).fetched++;
    q(m.queue).bytesOut += m.body.length;
  }

  function release(c: ConnModel, connId: number, queue: string, req: Req | null, why: string): void {
    const h = c.holds.get(queue);
    if (h === undefined) return;
    note(h.msg, connId, req, why);
    c.holds.delete(queue);
    if (h.msg.holder?.hold === h) h.msg.holder = null;
  }

  function hold(c: ConnModel, connId: number, m: Msg, req: Req): void {
    const h: Hold = { msg: m, sentAt: req.sentAt, receivedAt: req.receivedAt };
    c.holds.set(m.queue, h);
    c.maybeExpired.delete(m.queue);
    m.holder = { conn: connId, hold: h };
    counts.opened++;
  }

  /** A reply that is one error line: what it may mean, given what this connection holds. */
  function onGetError(c: ConnModel, connId: number, req: Req, line: string): void {
    if (serverError(line)) return; // the batch was undone: nothing changed
    const keys = req.keys!;
    if (line === ALREADY_OPEN) {
      if (!keys.some((k) => k.mode === "open" && c.holds.has(k.queue))) fail(`${line}, with nothing open on those queues`);
      counts.alreadyOpen++;
      return;
    }
    if (line !== LEASE_EXPIRED) fail(`unexpected ${show(line)}`);
    const closes = keys.filter((k) => k.mode === "close" || k.mode === "closeopen");
    const explained = closes.some((k) => {
      const h = c.holds.get(k.queue);
      return c.maybeExpired.has(k.queue) || (h !== undefined && !certain(h, req.receivedAt));
    });
    if (!explained) fail(`${line}, though no lease could have run out`);
    counts.leaseExpired++;
    for (const k of closes) {
      release(c, connId, k.queue, req, "lease expired (close said)");
      c.maybeExpired.delete(k.queue);
    }
  }

  function onGet(connId: number, req: Req, values: Value[], end: string): void {
    const c = conn(connId);
    if (end !== "END") return onGetError(c, connId, req, end);
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
    // A later /t= key that yielded nothing after its whole timeout waited (a wait that was served
    // would have a VALUE). Short timeouts are left out: load alone can delay a reply that long.
    const first = got.findIndex((v) => v !== null);
    const waited = keys.findIndex((k, i) => i > first && k.t >= LONG_WAIT_MS && got[i] === null);
    if (first >= 0 && waited >= 0 && !req.paused && req.receivedAt - req.startAt >= keys[waited]!.t) {
      fail(`the reply held a VALUE, yet it waited ${req.receivedAt - req.startAt} ms for ${keys[waited]!.key}`);
    }
    keys.forEach((k, i) => serveKey(c, connId, req, k, got[i]!));
  }

  function serveKey(c: ConnModel, connId: number, req: Req, k: KeySpec, v: Value | null): void {
    const h = c.holds.get(k.queue);
    if (k.mode === "abort") {
      if (h !== undefined && !certain(h, req.receivedAt)) c.maybeExpired.add(k.queue);
      return release(c, connId, k.queue, req, "aborted");
    }
    if (k.mode === "close" || k.mode === "closeopen") {
      // END, not the lease error: the close confirmed what was open (if anything was).
      if (h !== undefined) {
        consume(h.msg, `the close of connection ${connId}`);
        counts.confirmed++;
        release(c, connId, k.queue, req, "confirmed");
      }
      c.maybeExpired.delete(k.queue);
    }
    if (k.mode === "open" && h !== undefined) {
      if (certain(h, req.receivedAt)) fail(`${k.key} was served while m${h.msg.id} was open on that queue: expected ${ALREADY_OPEN}`);
      release(c, connId, k.queue, req, "lease expired (open said)"); // it went back
      c.maybeExpired.add(k.queue);
    }
    if (v === null) return;
    const m = valueMsg(v, k);
    checkNotHeld(m, connId, req);
    note(m, connId, req, k.mode === "plain" ? "taken" : k.mode === "peek" ? "peeked" : "handed out");
    if (k.mode === "peek") {
      counts.peeked++;
      return;
    }
    if (m.delivered++ > 0) counts.redelivered++;
    if (k.mode === "plain") consume(m, `a get on connection ${connId}`);
    else hold(c, connId, m, req);
  }

  return {
    counts,
    message,
    reply(connId: number, req: Req, reply: Reply): void {
      if (reply.kind === "get") onGet(connId, req, reply.values, reply.end);
      else if (reply.kind === "line" && req.msg > 0) onSet(req, reply.line);
      else if (reply.kind === "stats" && req.text.startsWith("stats queue ")) checkStatsFormat(reply.lines);
    },
    /** The connection is gone: what it held is back in its queues. */
    gone(connId: number): void {
      const c = conn(connId);
      for (const queue of [...c.holds.keys()]) release(c, connId, queue, null, "given back (disconnected)");
      c.live = false;
    },
    /** Holds that a request read at `at` could find expired, as [connection, queue]. */
    uncertain(at: number): [number, string][] {
      const out: [number, string][] = [];
      for (const [id, c] of conns) for (const [queue, h] of c.holds) if (c.live && !certain(h, at)) out.push([id, queue]);
      return out;
    },
    /** `stats queue <q>`'s first five fields as the model has them. */
    expected(queue: string): string {
      const c = q(queue);
      let open = 0;
      for (const m of conns.values()) if (m.live && m.holds.has(queue)) open++;
      return `items ${c.total - c.fetched} bytes ${c.bytesIn - c.bytesOut} total ${c.total} fetched ${c.fetched} open ${open}`;
    },
    /** A message the final drain took: stored, never consumed, taken once, FIFO per producer. */
    drained(v: Value, queue: string): void {
      const m = valueMsg(v, { key: queue, queue, mode: "plain", t: 0 });
      if (m.state !== "stored") failOn(m, `the drain found m${m.id}, whose set was never answered STORED`);
      if (m.consumed > 0 || drainedIds.has(m.id)) failOn(m, `the drain found m${m.id}, which was consumed already`);
      const key = `${queue} ${m.producer}`;
      if ((drainOrder.get(key) ?? -1) > m.pseq) fail(`the drain found m${m.id} after a later message of connection ${m.producer} on ${queue}`);
      drainOrder.set(key, m.pseq);
      drainedIds.add(m.id);
    },
    /** After the drain: every message acknowledged STORED was consumed or drained. */
    lost(): string[] {
      const out: string[] = [];
      for (const m of msgs.values()) {
        if (m.state === "sent") out.push(`m${m.id} (set at step ${m.step}) was never answered`);
        else if (m.state === "stored" && m.consumed === 0 && !drainedIds.has(m.id)) out.push(`m${m.id} on ${m.queue} is lost; its history: ${m.history.join("; ")}`);
      }
      return out;
    },
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
