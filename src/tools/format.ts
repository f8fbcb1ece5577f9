/**
 * The dump format (one versioned format for dump, load and backups), JSON Lines:
 *   {"type":"dump","format":1,"id":"<uuid>","created":1764000000000,"mcq":"1.0.0","lastId":9}
 *   {"type":"queue","name":"jobs","total":12,"fetched":4}          one per queue, first; with its
 *                                                                feature counters that are not 0
 *                                                                (FEATURE_FIELDS: "discarded":2…)
 *   {"type":"message","queue":"jobs","id":9,"flags":0,"created":…,"expires":0,"body":"<base64>"}
 *   {"type":"message",…,"due":1764000060000,"deliveries":2}     format 2: a delayed message (due, ms)
 *                                                                and how often it was opened
 *   {"type":"token","queue":"jobs","token":"order-17","until":…}  format 2: a `set q/id=` token, kept
 *                                                                until its window ends (ms)
 *   {"type":"end","queues":1,"messages":8}
 * The id in the header makes load idempotent: load records it, and refuses a dump it has already
 * loaded (a message's id is only unique within its queue and its data directory, so it cannot).
 * A restore into a data directory that never held a message keeps every message's id; a load
 * into one that did numbers them after its own, as does every load into Postgres (load-postgres.ts). The end line tells a whole dump from one cut short. A file from mcq 1.0.0 has neither (format
 * 0: no header, no id, no end); load reads it, and says that it cannot tell it was loaded before.
 */
import { open } from "node:fs/promises";
import { MAX_DELAY_MS } from "../protocol/parse";
import { FEATURE_COLUMNS } from "../store/counter-log";
import { ToolError } from "./datadir";

/** 2 (issue 12): due times, delivery counts and dedup tokens; load reads 1 and 2. */
export const FORMAT = 2;

export interface Header {
  type: "dump";
  format: number;
  id: string;
  created: number;
  mcq: string;
  /** The highest message id the data directory ever gave: a restore gives none of them again. */
  lastId: number;
}
export interface QueueLine {
  type: "queue";
  name: string;
  total: number;
  fetched: number;
  /** The feature counters (stats queue's names; absent: 0). Added by load like total and fetched. */
  deduplicated?: number;
  discarded?: number;
  dead_lettered?: number;
  dead_letter_skipped?: number;
  fanout_refused?: number;
}

/**
 * A queue line's feature counters, named as the queues table's columns (store/counter-log.ts). Optional
 * fields of format 2, so a dump with them still loads into an mcq that does not know them (which
 * leaves them out, as it kept them only since its start).
 */
export const FEATURE_FIELDS = FEATURE_COLUMNS;
export interface MessageLine {
  type: "message";
  queue: string;
  id?: number;
  flags: number;
  created: number;
  expires: number;
  body: string;
  /** A delayed message: no get returns it before this time (ms). */
  due?: number;
  /** Times it was opened without being closed. */
  deliveries?: number;
}
export interface TokenLine {
  type: "token";
  queue: string;
  token: string;
  until: number;
}
export interface EndLine {
  type: "end";
  queues: number;
  messages: number;
}
export type Line = Header | QueueLine | MessageLine | TokenLine | EndLine;

const NAME = /^[\x21-\x2e\x30-\x7e]{1,250}$/;
const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;
const TOKEN = /^[\x21-\x2e\x30-\x7e]{1,128}$/;
const whole = (v: unknown) => typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
/** Delivery counts are a 32-bit signed integer in both stores (Postgres's `integer`). */
const MAX_DELIVERIES = 2 ** 31 - 1;
/**
 * The latest due time a load takes, from now: a delay is at most MAX_DELAY_MS, so a dump's due
 * times are at most that after its creation, which is before now; a day more for the clocks of
 * two machines. A later one is not a dump of mcq's (and a far one would stay delayed for good).
 */
const DUE_AHEAD_MS = MAX_DELAY_MS + 24 * 60 * 60 * 1000;

/**
 * Whether `b64` (BASE64 passed) is what encoding its bytes gives, padding aside: Buffer.from
 * decodes any length, and drops the bits of a last character that do not make a whole byte, so
 * a body cut or altered there (`QUJDR`, `Q`) would load as other bytes without a word.
 */
function canonical(b64: string): boolean {
  const text = b64.replace(/=+$/, "");
  const pad = b64.length - text.length;
  const rest = text.length % 4;
  if (rest === 1 || (pad > 0 && rest + pad !== 4)) return false;
  if (rest === 0) return true;
  const last = B64_DIGITS.indexOf(text[text.length - 1]!);
  return (last & (rest === 2 ? 0xf : 0x3)) === 0; // the bits past the last whole byte are 0
}
const B64_DIGITS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/** One line of a dump, checked; a ToolError names the line and what is wrong with it. */
export function parseLine(text: string, n: number): Line {
  const bad = (why: string) => new ToolError(`mcq load: line ${n}: ${why}`);
  let line: unknown;
  try {
    line = JSON.parse(text);
  } catch {
    throw bad("not JSON");
  }
  if (typeof line !== "object" || line === null) throw bad("not a JSON object");
  const l = line as Record<string, unknown>;
  switch (l.type) {
    case "dump":
      if (!whole(l.format)) throw bad("bad format number");
      if (l.format !== FORMAT && l.format !== 1) throw bad(`dump format ${l.format}; this mcq reads formats 1 to ${FORMAT}`);
      if (typeof l.id !== "string" || l.id === "") throw bad("bad dump id");
      if (!whole(l.lastId)) throw bad("bad lastId");
      return l as unknown as Header;
    case "queue":
      if (typeof l.name !== "string" || !NAME.test(l.name)) throw bad("bad queue name");
      if (!whole(l.total) || !whole(l.fetched)) throw bad("bad counters");
      if (FEATURE_FIELDS.some((f) => l[f] !== undefined && !whole(l[f]))) throw bad("bad feature counters");
      return l as unknown as QueueLine;
    case "message":
      if (typeof l.queue !== "string" || !NAME.test(l.queue)) throw bad("bad queue name");
      if (!whole(l.flags) || (l.flags as number) > 4294967295 || !whole(l.created) || !whole(l.expires)) throw bad("bad numbers");
      if (l.id !== undefined && !whole(l.id)) throw bad("bad message id");
      if (typeof l.body !== "string" || !BASE64.test(l.body)) throw bad("body is not base64");
      if (!canonical(l.body)) throw bad("body is not whole base64 (cut short or altered)");
      if ((l.due !== undefined && !whole(l.due)) || (l.deliveries !== undefined && !(whole(l.deliveries) && (l.deliveries as number) <= MAX_DELIVERIES))) {
        throw bad("bad due or deliveries");
      }
      if (l.due !== undefined && (l.due as number) > Date.now() + DUE_AHEAD_MS) throw bad("due is more than 31 days from now (a delay is at most 30 days)");
      return l as unknown as MessageLine;
    case "token":
      if (typeof l.queue !== "string" || !NAME.test(l.queue)) throw bad("bad queue name");
      if (typeof l.token !== "string" || !TOKEN.test(l.token) || !whole(l.until)) throw bad("bad token");
      return l as unknown as TokenLine;
    case "end":
      if (!whole(l.queues) || !whole(l.messages)) throw bad("bad counts");
      return l as unknown as EndLine;
    default:
      throw bad(`unknown type ${JSON.stringify(l.type)}`);
  }
}

/** The lines of a byte stream, without holding more of it than one line and one chunk. */
/** Bytes read from a dump file at a time. */
const READ_BYTES = 1 << 20;

/**
 * A dump file in pieces of READ_BYTES, each read only once the last one was taken: a reader that
 * reads ahead of its consumer would hold as much of a large file as it got ahead by.
 */
export async function* fileChunks(path: string): AsyncGenerator<Uint8Array> {
  const handle = await open(path, "r");
  try {
    for (;;) {
      const buffer = Buffer.allocUnsafe(READ_BYTES);
      const { bytesRead } = await handle.read(buffer, 0, READ_BYTES, null);
      if (bytesRead === 0) return;
      yield buffer.subarray(0, bytesRead);
    }
  } finally {
    await handle.close();
  }
}

export async function* lines(stream: AsyncIterable<Uint8Array>): AsyncGenerator<string> {
  const decoder = new TextDecoder();
  let rest = "";
  for await (const chunk of stream) {
    rest += decoder.decode(chunk, { stream: true });
    let start = 0;
    for (let end = rest.indexOf("\n"); end >= 0; end = rest.indexOf("\n", start)) {
      yield rest.slice(start, end);
      start = end + 1;
    }
    rest = rest.slice(start);
  }
  rest += decoder.decode();
  if (rest !== "") yield rest;
}
