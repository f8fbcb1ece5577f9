/**
 * A pure parser for one request of the memcache text protocol as mcq speaks it
 * (docs/protocol.md). It reads bytes from `buf[start..end)` and never touches
 * sockets, the store or the clock, so any split of the input gives the same result.
 *
 * Grammar (tokens are separated by one or more spaces; a line ends at "\n", and
 * one "\r" right before it is dropped):
 *
 *   set <skey> <flags> <exptime> <bytes> [noreply] \r\n <bytes of data> \r\n
 *                            skey = <q> ("/" (delay=<ms> | id=<token>))*, each option at most once
 *   get|gets <key>+          key = <q> ("/" option)*
 *                            option = open | close | abort | peek | t=<ms> | delay=<ms> (with abort) | touch (alone)
 *   delete <q> [0] [noreply]
 *   flush <q> [noreply]
 *   flush_all [<delay>] [noreply]
 *   stats | stats queue | stats queue <q> | stats reset
 *   version | verbosity <n> [noreply] | quit | refresh_certs | redrive <q> <q>
 *
 *   <q>       1..250 bytes of 0x21..0x7e without "/"; a whole key, options included, is at most 250 bytes
 *   delay     0..2592000000 ms (30 days)      <token>  1..128 bytes of 0x21..0x7e without "/"
 *   <flags>   0..4294967295          <exptime>  a signed 32-bit integer
 *   <bytes>   0..2147483647 (digits only)
 *
 * Errors follow docs/protocol.md: an unknown command or a wrong word count is ERROR; bad input is
 * CLIENT_ERROR. After a `set` line whose <bytes> is valid, the data block is always
 * skipped on error ("swallowed"); with an invalid <bytes> its length is unknown, so it
 * is not.
 */
import type { GetKey, SetOptions } from "./types";
import { REPLY } from "./reply";
import { ADMIN } from "./parse-admin";
import { CR, LF, MAX_BYTES, MAX_NAME, type Parsed, SLASH, decodeName, number, reply, request, signedInt32, tokenize, validName, word } from "./tokens";

export type { Parsed } from "./tokens";

export interface Limits {
  /** Longest command line, without its "\r\n". */
  maxLine: number;
  /** Largest message body (-B). */
  maxBody: number;
}

const MAX_FLAGS = 4294967295;
/** A blocking get waits at most this long (setTimeout's limit is 2^31-1 ms). */
const MAX_WAIT_MS = 2147483647;
/** The longest delay of a set or an abort: 30 days, as the issue settles (SQS stops at 15 minutes). */
export const MAX_DELAY_MS = 30 * 24 * 60 * 60 * 1000;
const NO_OPTIONS: SetOptions = { delay: 0, id: null };
/** The longest idempotency token (`set q/id=<token>`). */
const MAX_TOKEN = 128;

const MORE_UNKNOWN: Parsed = { type: "more", need: 0 };

/** Parses the request at `buf[start]`; `end` is the end of the valid input. */
export function parseRequest(buf: Buffer, start: number, end: number, limits: Limits): Parsed {
  // A plain loop beats Buffer.indexOf's native call on lines this short, and it stops at the
  // line limit instead of scanning a megabyte body that has no newline.
  const stop = Math.min(end, start + limits.maxLine + 2);
  let nl = start;
  while (nl < stop && buf[nl] !== LF) nl++;
  if (nl === stop) {
    // A line may still be short enough if the only byte past the limit is the "\r" of its end.
    const pending = end - start;
    if (pending > limits.maxLine + 1 || (pending === limits.maxLine + 1 && buf[end - 1] !== CR)) {
      return reply(REPLY.LINE_TOO_LONG, end, 0, true);
    }
    return MORE_UNKNOWN;
  }
  const lineEnd = nl > start && buf[nl - 1] === CR ? nl - 1 : nl;
  if (lineEnd - start > limits.maxLine) return reply(REPLY.LINE_TOO_LONG, nl + 1, 0, true);
  const tokens = tokenize(buf, start, lineEnd);
  const next = nl + 1;
  if (tokens.length === 0) return reply(REPLY.ERROR, next);
  const command = commandWord(buf, tokens[0]!, tokens[1]!);
  if (command === "get" || command === "gets") return parseGet(buf, tokens, next, command === "gets");
  if (command === "set") return parseSet(buf, tokens, next, end, limits);
  // The other commands are rare: a table lookup, each in its own small parser (parse-admin.ts).
  const parser = Object.hasOwn(ADMIN, command) ? ADMIN[command]! : null;
  return parser === null ? reply(REPLY.ERROR, next) : parser(buf, tokens, next);
}

function parseSet(buf: Buffer, tokens: number[], next: number, end: number, limits: Limits): Parsed {
  const words = tokens.length / 2;
  if (words !== 5 && words !== 6) return reply(REPLY.ERROR, next);
  const bytes = number(buf, tokens, 4, MAX_BYTES);
  // Without a valid length the data block cannot be found, so it is not skipped.
  if (bytes < 0) return reply(REPLY.BAD_FORMAT, next);
  const block = bytes + 2;
  const key = parseSetKey(buf, tokens[2]!, tokens[3]!);
  const queue = key === null ? null : key.queue;
  const flags = number(buf, tokens, 2, MAX_FLAGS);
  const exptime = signedInt32(buf, tokens, 3);
  const noreply = words === 6;
  if (queue === null || flags < 0 || exptime === null || (noreply && word(buf, tokens, 5) !== "noreply")) {
    return reply(REPLY.BAD_FORMAT, next, block);
  }
  // Too large: answer now and discard the block as it streams past, never holding it.
  if (bytes > limits.maxBody) return reply(REPLY.TOO_LARGE, next, block);
  if (end - next < block) return { type: "more", need: next + block };
  if (buf[next + bytes] !== CR || buf[next + bytes + 1] !== LF) return reply(REPLY.BAD_CHUNK, next + block);
  const data = buf.subarray(next, next + bytes);
  return request({ kind: "set", queue, flags, exptime, data, noreply, options: key!.options }, next + block);
}

/**
 * `q` or `q/delay=5000`: the queue and the set's options, or null if the name or an option is bad
 * (an option no set knows is a bad name, as a `/` in a set key was before set took options).
 */
export function parseSetKey(buf: Buffer, from: number, to: number): { queue: string; options: SetOptions } | null {
  let slash = from;
  while (slash < to && buf[slash] !== SLASH) slash++;
  if (!validName(buf, from, slash)) return null;
  const queue = decodeName(buf, from, slash);
  if (slash === to) return { queue, options: NO_OPTIONS };
  if (to - from > MAX_NAME) return null;
  let delay = -1;
  let id: string | null = null;
  for (const option of buf.toString("latin1", slash + 1, to).split("/")) {
    if (option.startsWith("delay=") && delay < 0) {
      delay = delayMs(option.slice(6));
      if (delay < 0) return null;
    } else if (option.startsWith("id=") && id === null && validToken(option, 3)) id = option.slice(3);
    else return null;
  }
  return { queue, options: { delay: Math.max(delay, 0), id } };
}

/** 1 to MAX_TOKEN printable bytes from `from` on (a "/" cannot occur: it separates options). */
function validToken(text: string, from: number): boolean {
  if (text.length - from < 1 || text.length - from > MAX_TOKEN) return false;
  for (let i = from; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x21 || c > 0x7e) return false;
  }
  return true;
}

/** Milliseconds of a `delay=` option, at most MAX_DELAY_MS; -1 if it is not such a number. */
function delayMs(text: string): number {
  if (!/^\d{1,10}$/.test(text)) return -1;
  const ms = Number(text);
  return ms <= MAX_DELAY_MS ? ms : -1;
}

function parseGet(buf: Buffer, tokens: number[], next: number, withIds: boolean): Parsed {
  if (tokens.length < 4) return reply(REPLY.ERROR, next);
  const keys: GetKey[] = [];
  // Every key is checked before any is served: a bad key consumes nothing.
  for (let i = 2; i < tokens.length; i += 2) {
    const key = parseKey(buf, tokens[i]!, tokens[i + 1]!);
    if (key === null) return reply(REPLY.BAD_FORMAT, next);
    keys.push(key);
  }
  return request({ kind: "get", keys, withIds }, next);
}

/** `q/open/t=500` → GetKey, or null if the name or an option is bad or they make no sense together. */
export function parseKey(buf: Buffer, from: number, to: number): GetKey | null {
  let slash = from;
  while (slash < to && buf[slash] !== SLASH) slash++;
  if (!validName(buf, from, slash)) return null;
  const queue = decodeName(buf, from, slash);
  const key: GetKey = {
    queue,
    // Clients match each VALUE to a key they asked for, so the echo is the whole key.
    key: slash === to ? queue : buf.toString("latin1", from, to),
    open: false,
    close: false,
    abort: false,
    peek: false,
    touch: false,
    timeout: -1,
    delay: 0,
  };
  if (slash === to) return key;
  if (to - from > MAX_NAME) return null;
  const options = buf.toString("latin1", slash + 1, to).split("/");
  let delay = -1;
  for (const option of options) {
    if (option === "open" && !key.open) key.open = true;
    else if (option === "close" && !key.close) key.close = true;
    else if (option === "abort" && !key.abort) key.abort = true;
    else if (option === "peek" && !key.peek) key.peek = true;
    else if (option === "touch" && options.length === 1) key.touch = true;
    else if (option.startsWith("t=") && key.timeout < 0 && /^\d{1,10}$/.test(option.slice(2))) {
      key.timeout = Math.min(Number(option.slice(2)), MAX_WAIT_MS);
    } else if (option.startsWith("delay=") && delay < 0) {
      delay = delayMs(option.slice(6));
      if (delay < 0) return null;
    } else return null;
  }
  // A delay says when an aborted message comes back: it means nothing without abort.
  if (delay >= 0 && !key.abort) return null;
  key.delay = Math.max(delay, 0);
  // Combinations that make no sense (Kestrel's rules, made strict).
  if (key.abort && (key.open || key.close || key.peek || key.timeout >= 0)) return null;
  if (key.peek && (key.open || key.close)) return null;
  if (key.close && !key.open && key.timeout >= 0) return null;
  return key;
}

/** The command word; get and set without a string allocation, since they are most requests. */
function commandWord(buf: Buffer, from: number, to: number): string {
  if (to - from === 3 && buf[from + 1] === 0x65 && buf[from + 2] === 0x74) {
    if (buf[from] === 0x67) return "get";
    if (buf[from] === 0x73) return "set";
  }
  return buf.toString("latin1", from, to);
}

