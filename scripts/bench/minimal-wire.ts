/**
 * What the two measured ceilings (minimal.ts, minimal-durable.ts) share: an in-memory FIFO and just
 * enough of the memcache protocol for `mcbench -m pair` (set, and get of one key). Anything else is
 * answered with ERROR. Kept minimal on purpose: these servers measure Bun's floor, not mcq's parser.
 */

/** A FIFO with a moving head: shift() on a long array is O(n). */
export class Fifo<T> {
  items: T[] = [];
  head = 0;
  push(m: T): void {
    this.items.push(m);
  }
  take(): T | undefined {
    if (this.head === this.items.length) return undefined;
    const m = this.items[this.head++]!;
    if (this.head === this.items.length) (this.items = []), (this.head = 0);
    return m;
  }
}

export const STORED = Buffer.from("STORED\r\n");
export const END = Buffer.from("END\r\n");
export const ERROR = Buffer.from("ERROR\r\n");

/** What a get hands back: the flags as the set gave them, and the body. */
export interface Stored {
  flagsText: string;
  body: Buffer;
}

export interface Handlers {
  /** `body` is a copy: the chunk it came in is Bun's and is reused after the data callback. */
  set(queue: string, flagsText: string, body: Buffer): void;
  get(queue: string): Stored | undefined;
}

/** Parses and runs every complete request in `input`, pushing replies to `out`; returns the bytes used. */
export function runRequests(input: Buffer, out: Buffer[], h: Handlers): number {
  let at = 0;
  while (at < input.length) {
    const eol = input.indexOf("\r\n", at);
    if (eol < 0) break;
    const words = input.toString("latin1", at, eol).split(" ");
    if (words[0] === "set" && words.length >= 5) {
      const bytes = Number(words[4]);
      const end = eol + 2 + bytes;
      if (!Number.isInteger(bytes) || bytes < 0) {
        out.push(ERROR);
        at = eol + 2;
        continue;
      }
      if (input.length < end + 2) break; // the body is not all here yet
      h.set(words[1]!, words[2]!, Buffer.from(input.subarray(eol + 2, end)));
      out.push(STORED);
      at = end + 2;
    } else if (words[0] === "get" && words.length === 2) {
      const m = h.get(words[1]!);
      if (m !== undefined) {
        out.push(Buffer.from(`VALUE ${words[1]} ${m.flagsText} ${m.body.length}\r\n`, "latin1"), m.body, Buffer.from("\r\nEND\r\n"));
      } else out.push(END);
      at = eol + 2;
    } else {
      out.push(ERROR);
      at = eol + 2;
    }
  }
  return at;
}
