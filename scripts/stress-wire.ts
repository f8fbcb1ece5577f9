/**
 * The stress test's connection: a harness Client, the requests it has in flight (oldest first)
 * and a strict reader that parses each reply by what its request expects. Anything that is not
 * exactly one well-formed reply per request is a violation: bytes with no request in flight, a
 * line a reply of that kind cannot hold, an error line after a VALUE, or the server closing the
 * connection with requests unanswered. The reader never decides what a reply means; the model
 * (stress-model.ts) does.
 */
import { Client } from "../test/e2e/harness";

/** What a get key asks for; `closeopen` is `q/close/open`. */
export type Mode = "plain" | "peek" | "open" | "close" | "abort" | "closeopen";

export interface KeySpec {
  key: string;
  queue: string;
  mode: Mode;
  /** The /t= wait in ms, 0 for none. */
  t: number;
}

export interface Value {
  key: string;
  flags: number;
  body: Buffer;
}

export type Reply =
  | { kind: "line"; line: string }
  /** `end` is "END", or the error line that was the whole reply (never after a VALUE). */
  | { kind: "get"; values: Value[]; end: string }
  | { kind: "stats"; lines: string[] };

export interface Req {
  step: number;
  /** What was sent, shortened, for failure messages. */
  text: string;
  expect: "line" | "get" | "stats";
  keys: KeySpec[] | null;
  /** The model's message id for a set. */
  msg: number;
  sentAt: number;
  /** When the server could start on it: sent, and the previous reply on the connection read. */
  startAt: number;
  receivedAt: number;
  /** The client paused its socket while this was in flight: its timing says nothing. */
  paused: boolean;
  reply: Reply | null;
}

const DAY_MS = 86_400_000;
/** No reply line is longer: a longer run of bytes without CRLF is garbage, not a slow reply. */
const MAX_LINE = 1024;

export interface StressConn {
  id: number;
  client: Client;
  pending: Req[];
  paused: boolean;
  /** Requests sent since everything was last answered (counted by sending, so the seed decides). */
  unsettled: number;
  /** We ended it: a close is no violation (after a quit, only once every request is answered). */
  leaving: "quit" | "destroy" | null;
  closed: boolean;
  /** The last requests and their replies, for failure messages. */
  log: string[];
  /** Sends the requests' bytes in one write. */
  send(reqs: Req[], bytes: string | Uint8Array): void;
  pause(): void;
  resume(): void;
  /** Resolves when `done()` holds, or rejects after `ms` naming what it waited for. */
  until(done: () => boolean, ms: number, what: string): Promise<void>;
}

type OnReply = (conn: StressConn, req: Req, reply: Reply) => void;
type OnViolation = (conn: StressConn, req: Req | null, what: string) => void;

/** What the reader keeps besides the connection: unparsed bytes and who waits for news. */
interface ReadState {
  buf: Buffer;
  lastReplyAt: number;
  wake: (() => void)[];
  broken: boolean;
}

/**
 * Connects and starts reading. `onReply` gets each reply in order; `onViolation` the first thing
 * that breaks the wire contract (the connection stops being read after it).
 */
export async function openConn(port: number, id: number, onReply: OnReply, onViolation: OnViolation): Promise<StressConn> {
  const client = await Client.connect(port);
  const rs: ReadState = { buf: Buffer.alloc(0), lastReplyAt: 0, wake: [], broken: false };
  const conn: StressConn = {
    id,
    client,
    pending: [],
    paused: false,
    unsettled: 0,
    leaving: null,
    closed: false,
    log: [],
    send(reqs, bytes) {
      conn.unsettled += reqs.length;
      for (const req of reqs) {
        req.paused = conn.paused;
        conn.pending.push(req);
      }
      client.write(bytes);
    },
    pause() {
      conn.paused = true;
      for (const req of conn.pending) req.paused = true;
      client.socket.pause();
    },
    resume() {
      conn.paused = false;
      client.socket.resume();
    },
    async until(done, ms, what) {
      const deadline = Date.now() + ms;
      while (!done()) {
        const left = deadline - Date.now();
        if (left <= 0 || rs.broken) throw new Error(`${what}: ${rs.broken ? "the connection broke" : `not within ${ms} ms`}`);
        await new Promise<void>((ok) => {
          const timer = setTimeout(ok, left);
          rs.wake.push(() => {
            clearTimeout(timer);
            ok();
          });
        });
      }
    },
  };
  void pump(conn, rs, onReply, (req, what) => {
    rs.broken = true;
    onViolation(conn, req, what);
  });
  return conn;
}

/** Reads until the connection closes; a close we did not ask for, or too early, is a violation. */
async function pump(conn: StressConn, rs: ReadState, onReply: OnReply, violation: (req: Req | null, what: string) => void) {
  const notify = () => {
    const list = rs.wake;
    rs.wake = [];
    for (const fn of list) fn();
  };
  // Client.until hands over and clears what arrived, so nothing is copied twice.
  for (;;) {
    const chunk = await conn.client.until((b) => b.length > 0, DAY_MS);
    if (chunk.length > 0) feed(conn, rs, chunk, onReply, violation);
    notify();
    if (conn.client.closed && chunk.length === 0) break;
  }
  conn.closed = true;
  if (!rs.broken && conn.leaving === null) violation(conn.pending[0] ?? null, "the server closed the connection");
  else if (!rs.broken && conn.leaving === "quit" && conn.pending.length > 0) {
    violation(conn.pending[0]!, `the server closed the connection with ${conn.pending.length} requests unanswered`);
  }
  notify();
}

/** Parses what arrived into replies, each for the oldest request in flight. */
function feed(conn: StressConn, rs: ReadState, chunk: Buffer, onReply: OnReply, violation: (req: Req | null, what: string) => void): void {
  rs.buf = rs.buf.length === 0 ? chunk : Buffer.concat([rs.buf, chunk]);
  while (rs.buf.length > 0 && !rs.broken) {
    const req = conn.pending[0];
    if (req === undefined) return violation(null, `bytes with no request in flight: ${show(rs.buf)}`);
    const parsed = parse(rs.buf, req.expect);
    if (parsed === null) return;
    if ("error" in parsed) return violation(req, `${parsed.error}: ${show(rs.buf)}`);
    rs.buf = rs.buf.subarray(parsed.used);
    conn.pending.shift();
    req.receivedAt = Date.now();
    req.startAt = Math.max(req.sentAt, rs.lastReplyAt);
    rs.lastReplyAt = req.receivedAt;
    req.reply = parsed.reply;
    if (conn.log.push(`step ${req.step} ${JSON.stringify(req.text)} sent ${req.sentAt} read ${req.receivedAt}: ${showReply(parsed.reply)}`) > 12) conn.log.shift();
    onReply(conn, req, parsed.reply);
  }
}

/** Requests whose reply may be lost with the connection without changing what is stored. */
export function safe(req: Req): boolean {
  if (req.expect === "stats") return true;
  if (req.expect !== "get") return false; // a set, or a line reply
  return req.keys!.every((k) => k.mode === "open" || k.mode === "peek" || k.mode === "abort");
}

type Parsed = { reply: Reply; used: number } | { error: string } | null;

function parse(buf: Buffer, expect: Req["expect"]): Parsed {
  let at = 0;
  const line = (): string | null | { error: string } => {
    const end = buf.indexOf("\r\n", at, "latin1");
    if (end < 0) return buf.length - at > MAX_LINE ? { error: "no line end" } : null;
    const text = buf.toString("latin1", at, end);
    at = end + 2;
    return text;
  };
  if (expect === "line") {
    const l = line();
    return l === null || typeof l !== "string" ? l : { reply: { kind: "line", line: l }, used: at };
  }
  if (expect === "stats") {
    const lines: string[] = [];
    for (;;) {
      const l = line();
      if (l === null || typeof l !== "string") return l;
      if (l === "END") return { reply: { kind: "stats", lines }, used: at };
      if (!/^STAT \S+ \S+$/.test(l)) return { error: `not a STAT line: ${JSON.stringify(l)}` };
      lines.push(l);
    }
  }
  const values: Value[] = [];
  for (;;) {
    const l = line();
    if (l === null || typeof l !== "string") return l;
    if (l === "END") return { reply: { kind: "get", values, end: l }, used: at };
    if (values.length === 0 && /^(SERVER|CLIENT)_ERROR \S/.test(l)) return { reply: { kind: "get", values, end: l }, used: at };
    const m = /^VALUE (\S+) (\d+) (\d+)$/.exec(l);
    if (m === null) return { error: `${values.length > 0 ? "after a VALUE, " : ""}not a get reply line: ${JSON.stringify(l)}` };
    const n = Number(m[3]);
    if (buf.length < at + n + 2) return null;
    if (buf[at + n] !== 13 || buf[at + n + 1] !== 10) return { error: "a VALUE's data is not followed by CRLF" };
    values.push({ key: m[1]!, flags: Number(m[2]), body: buf.subarray(at, at + n) });
    at += n + 2;
  }
}

export function showReply(reply: Reply): string {
  if (reply.kind === "line") return reply.line;
  if (reply.kind === "stats") return reply.lines.join(" | ");
  return reply.values.map((v) => `VALUE ${v.key} ${v.flags} ${v.body.length} ${v.body.toString("latin1", 0, 10)}…`).concat(reply.end).join(" | ");
}

/** Bytes for a failure message: the start, as JSON. */
export function show(bytes: Buffer | string): string {
  const text = typeof bytes === "string" ? bytes : bytes.toString("latin1", 0, Math.min(bytes.length, 300));
  return JSON.stringify(text.slice(0, 300)) + (bytes.length > 300 ? `… (${bytes.length} bytes)` : "");
}
