/**
 * The words of a request line, for the parsers (parse.ts, parse-admin.ts): the line split into
 * token offsets without copying, and the checks of names and numbers that every command shares.
 * Pure: bytes in, values out.
 */
import type { Request } from "./types";

export type Parsed =
  /** Not enough input yet. `need` is the total length (from start) known to be required, or 0. */
  | { type: "more"; need: number }
  /** A request (or an error reply) that ends at `next`; then `skip` more bytes are to be discarded. */
  | { type: "request"; req: Request; next: number; skip: number };

export const LF = 10;
export const CR = 13;
export const SP = 32;
export const SLASH = 47;
export const MAX_NAME = 250;
export const MAX_BYTES = 2147483647;

/** An error reply as the parsed request; `skip` bytes of a data block are discarded after `next`. */
export function reply(text: string, next: number, skip = 0, close = false): Parsed {
  return { type: "request", req: { kind: "error", reply: text, close }, next, skip };
}

export function request(req: Request, next: number): Parsed {
  return { type: "request", req, next, skip: 0 };
}

// One scratch array reused for every line: the parser is synchronous and tokens never outlive
// the call, so there is no need to allocate a fresh array per request.
const scratch: number[] = [];

/** Start/end offsets of the space-separated tokens of a line, flattened: [s0, e0, s1, e1, …]. */
export function tokenize(buf: Buffer, from: number, to: number): number[] {
  const tokens = scratch;
  tokens.length = 0;
  let i = from;
  while (i < to) {
    while (i < to && buf[i] === SP) i++;
    if (i === to) break;
    const s = i;
    while (i < to && buf[i] !== SP) i++;
    tokens.push(s, i);
  }
  return tokens;
}

export function word(buf: Buffer, tokens: number[], i: number): string {
  return buf.toString("latin1", tokens[2 * i]!, tokens[2 * i + 1]!);
}

/** The words from index `i` on, joined by one space. */
export function rest(buf: Buffer, tokens: number[], i: number): string {
  const words: string[] = [];
  for (let j = i; j < tokens.length / 2; j++) words.push(word(buf, tokens, j));
  return words.join(" ");
}

/**
 * The same few queue names arrive over and over: keep the last string seen per hash slot and
 * reuse it when the bytes match, instead of decoding a new one for every request.
 */
const NAME_SLOTS = 1024;
const names: (string | undefined)[] = new Array(NAME_SLOTS);

export function decodeName(buf: Buffer, from: number, to: number): string {
  let hash = 0;
  for (let i = from; i < to; i++) hash = (Math.imul(hash, 31) + buf[i]!) | 0;
  const slot = hash & (NAME_SLOTS - 1);
  const known = names[slot];
  if (known !== undefined && known.length === to - from) {
    let same = true;
    for (let i = 0; i < known.length && same; i++) same = known.charCodeAt(i) === buf[from + i];
    if (same) return known;
  }
  return (names[slot] = buf.toString("latin1", from, to));
}

export function validName(buf: Buffer, from: number, to: number): boolean {
  const length = to - from;
  if (length < 1 || length > MAX_NAME) return false;
  for (let i = from; i < to; i++) {
    const c = buf[i]!;
    if (c < 0x21 || c > 0x7e || c === SLASH) return false;
  }
  return true;
}

export function name(buf: Buffer, tokens: number[], i: number): string | null {
  const from = tokens[2 * i]!;
  const to = tokens[2 * i + 1]!;
  return validName(buf, from, to) ? decodeName(buf, from, to) : null;
}

/** An unsigned decimal of digits only, at most `max`; -1 if it is not one. */
export function number(buf: Buffer, tokens: number[], i: number, max: number): number {
  const from = tokens[2 * i]!;
  const to = tokens[2 * i + 1]!;
  if (to - from > 20) return -1;
  let n = 0;
  for (let j = from; j < to; j++) {
    const d = buf[j]! - 48;
    if (d < 0 || d > 9) return -1;
    n = n * 10 + d;
  }
  return n > max ? -1 : n;
}

/** A signed 32-bit decimal ("-" then 1 to 10 digits); null if it is not one. */
export function signedInt32(buf: Buffer, tokens: number[], i: number): number | null {
  let from = tokens[2 * i]!;
  const to = tokens[2 * i + 1]!;
  const negative = buf[from] === 0x2d;
  if (negative) from++;
  if (to - from < 1 || to - from > 10) return null;
  let n = 0;
  for (let j = from; j < to; j++) {
    const d = buf[j]! - 48;
    if (d < 0 || d > 9) return null;
    n = n * 10 + d;
  }
  if (negative) n = -n;
  return n >= -2147483648 && n <= 2147483647 ? n : null;
}
