/**
 * Parser fixtures, each replayed through the framer as one chunk, byte by byte, and split
 * in two at every offset (node-redis's harness, extended): the result must not depend on
 * how the bytes arrive.
 */
import { describe, expect, test } from "bun:test";
import { createFramer } from "../../src/protocol/framer";
import { parseKey } from "../../src/protocol/parse";
import type { Request } from "../../src/protocol/types";

const LIMITS = { maxLine: 8192, maxBody: 1024 };

interface Fixture {
  name: string;
  input: string;
  expect: unknown[];
}

/** Requests as plain values; a set's data view becomes a string. */
function plain(req: Request): unknown {
  if (req.kind === "set") {
    // A set without options is written as before; one with options shows them.
    const { options, ...rest } = req;
    const plainSet = { ...rest, data: Buffer.from(req.data).toString("latin1") };
    return options.delay === 0 && options.id === null ? plainSet : { ...plainSet, options };
  }
  return req;
}

function replay(chunks: Buffer[]): unknown[] {
  const framer = createFramer(LIMITS);
  const out: unknown[] = [];
  for (const chunk of chunks) {
    framer.push(chunk);
    for (let r = framer.next(); r !== null; r = framer.next()) {
      out.push(plain(r));
      if (r.kind === "error" && r.close) return out;
    }
  }
  return out;
}

/** A parsed key: `raw` is the key as requested, its queue the part before the first "/". */
const key = (raw: string, o: Partial<Omit<import("../../src/protocol/types").GetKey, "queue" | "key">> = {}) => ({
  queue: raw.split("/")[0], key: raw, open: false, close: false, abort: false, peek: false, touch: false, timeout: -1, delay: 0, ...o,
});
const err = (reply: string, close = false) => ({ kind: "error" as const, reply: reply + "\r\n", close });
const BAD = err("CLIENT_ERROR bad command line format");

const fixtures: Fixture[] = [
  {
    name: "set options: delay; unknown, repeated or out-of-range options are bad names and swallow the block",
    input:
      "set q/delay=5000 0 0 1\r\na\r\nset q/delay=2592000000 0 0 1\r\nb\r\nset q/delay=2592000001 0 0 1\r\nc\r\n" +
      "set q/nope 0 0 1\r\nd\r\nset q/delay=1/delay=2 0 0 1\r\ne\r\nset q/delay=-1 0 0 1\r\nf\r\nset q/ 0 0 1\r\ng\r\nversion\r\n",
    expect: [
      { kind: "set", queue: "q", flags: 0, exptime: 0, data: "a", noreply: false, options: { delay: 5000, id: null } },
      { kind: "set", queue: "q", flags: 0, exptime: 0, data: "b", noreply: false, options: { delay: 2592000000, id: null } },
      BAD, BAD, BAD, BAD, BAD,
      { kind: "version" },
    ],
  },
  {
    name: "set options: id=<token> of 1 to 128 printable bytes, with or without a delay",
    input: `set q/id=${"t".repeat(128)} 0 0 1\r\na\r\nset q/delay=5/id=x-1 0 0 1\r\nb\r\nset q/id=${"t".repeat(129)} 0 0 1\r\nc\r\n` +
      "set q/id= 0 0 1\r\nd\r\nset q/id=a/id=b 0 0 1\r\ne\r\nset q/id=\x01 0 0 1\r\nf\r\n",
    expect: [
      { kind: "set", queue: "q", flags: 0, exptime: 0, data: "a", noreply: false, options: { delay: 0, id: "t".repeat(128) } },
      { kind: "set", queue: "q", flags: 0, exptime: 0, data: "b", noreply: false, options: { delay: 5, id: "x-1" } },
      BAD, BAD, BAD, BAD,
    ],
  },
  {
    name: "the whole key, options included, is at most 250 bytes",
    input: `set ${"q".repeat(242)}/delay=1 0 0 1\r\na\r\nset ${"q".repeat(243)}/delay=1 0 0 1\r\nb\r\n` +
      `get ${"q".repeat(245)}/open\r\nget ${"q".repeat(246)}/open\r\n`,
    expect: [
      { kind: "set", queue: "q".repeat(242), flags: 0, exptime: 0, data: "a", noreply: false, options: { delay: 1, id: null } },
      BAD,
      { kind: "get", keys: [key(`${"q".repeat(245)}/open`, { open: true })], withIds: false },
      BAD,
    ],
  },
  {
    name: "get abort/delay: a delay only with abort",
    input: "get q/abort/delay=100\r\nget q/delay=100/abort\r\nget q/delay=100\r\nget q/open/delay=5\r\nget q/abort/delay=2592000001\r\n",
    expect: [
      { kind: "get", keys: [key("q/abort/delay=100", { abort: true, delay: 100 })], withIds: false },
      { kind: "get", keys: [key("q/delay=100/abort", { abort: true, delay: 100 })], withIds: false },
      BAD, BAD, BAD,
    ],
  },
  {
    name: "set and get",
    input: "set q 5 0 3\r\nabc\r\nget q\r\n",
    expect: [
      { kind: "set", queue: "q", flags: 5, exptime: 0, data: "abc", noreply: false },
      { kind: "get", keys: [key("q")], withIds: false },
    ],
  },
  {
    name: "bare LF, runs of spaces, noreply, empty body",
    input: "set  q 0 0 0  noreply\n\r\ngets a b\n",
    expect: [
      { kind: "set", queue: "q", flags: 0, exptime: 0, data: "", noreply: true },
      { kind: "get", keys: [key("a"), key("b")], withIds: true },
    ],
  },
  {
    name: "binary body with CRLF inside",
    input: "set q 0 0 6\r\n\r\nEND\n\r\nversion\r\n",
    expect: [{ kind: "set", queue: "q", flags: 0, exptime: 0, data: "\r\nEND\n", noreply: false }, { kind: "version" }],
  },
  {
    name: "bad length is not swallowed",
    input: "set q 0 0 -1\r\nversion\r\n",
    expect: [BAD, { kind: "version" }],
  },
  {
    name: "bad flags swallow the block",
    input: "set q x 0 5\r\nhello\r\nversion\r\n",
    expect: [BAD, { kind: "version" }],
  },
  {
    name: "too large is swallowed as it streams",
    input: `set q 0 0 2000\r\n${"z".repeat(2000)}\r\nversion\r\n`,
    expect: [err("SERVER_ERROR object too large for cache"), { kind: "version" }],
  },
  {
    name: "bad data chunk consumes bytes+2",
    input: "set q 0 0 5\r\nhelloXXversion\r\n",
    expect: [err("CLIENT_ERROR bad data chunk"), { kind: "version" }],
  },
  {
    name: "admin commands",
    input: "delete q\r\ndelete q 0 noreply\r\nflush q\r\nflush_all noreply\r\nstats\r\nstats queue\r\nstats queue q\r\nstats reset\r\nverbosity 1\r\nquit\r\n",
    expect: [
      { kind: "delete", queue: "q", noreply: false },
      { kind: "delete", queue: "q", noreply: true },
      { kind: "flush", queue: "q", noreply: false },
      { kind: "flush_all", noreply: true },
      { kind: "stats", section: "general" },
      { kind: "stats", section: "queues" },
      { kind: "stats_queue", queue: "q" },
      { kind: "stats", section: "reset" },
      { kind: "verbosity", level: 1, noreply: false },
      { kind: "quit" },
    ],
  },
  {
    name: "errors: unknown, upper case, word counts, stats of something else",
    input: "GET q\r\nget\r\nset q 0 0\r\nstats slabs\r\n\r\nversion x\r\n",
    expect: [err("ERROR"), err("ERROR"), err("ERROR"), err("ERROR"), err("ERROR"), err("ERROR")],
  },
  {
    name: "get options",
    input: "get a/open b/t=500/peek c/close/open d/abort\r\n",
    expect: [{
      kind: "get",
      keys: [key("a/open", { open: true }), key("b/t=500/peek", { peek: true, timeout: 500 }), key("c/close/open", { open: true, close: true }), key("d/abort", { abort: true })],
      withIds: false,
    }],
  },
  {
    name: "a line over the limit closes",
    input: `get ${"k".repeat(8200)}\r\nversion\r\n`,
    expect: [err("CLIENT_ERROR line too long", true)],
  },
];

describe("fixtures", () => {
  for (const f of fixtures) {
    const bytes = Buffer.from(f.input, "latin1");
    test(`${f.name}: whole`, () => expect(replay([bytes])).toEqual(f.expect));
    test(`${f.name}: byte by byte`, () => {
      expect(replay([...bytes].map((b) => Buffer.from([b])))).toEqual(f.expect);
    });
    test(`${f.name}: every two-way split`, () => {
      for (let i = 1; i < bytes.length; i++) {
        expect(replay([bytes.subarray(0, i), bytes.subarray(i)])).toEqual(f.expect);
      }
    });
  }
});

describe("limits", () => {
  test("an endless line is refused once it passes the limit, not at its end", () => {
    const framer = createFramer(LIMITS);
    framer.push(Buffer.from("get " + "a".repeat(8188)));
    expect(framer.next()).toBeNull();
    framer.push(Buffer.from("aa"));
    expect(framer.next()).toEqual(err("CLIENT_ERROR line too long", true));
  });

  test("a line of exactly the limit waits for its CR LF", () => {
    const framer = createFramer(LIMITS);
    const line = "get " + "a".repeat(250) + " " + "b".repeat(8192 - 255);
    framer.push(Buffer.from(line + "\r"));
    expect(framer.next()).toBeNull();
    framer.push(Buffer.from("\n"));
    expect(framer.next()?.kind).toBe("error"); // a 7937-byte name is bad, but the line was not too long
  });

  test("a swallowed block is never held: pending stays small", () => {
    const framer = createFramer(LIMITS);
    framer.push(Buffer.from("set q 0 0 100000\r\n"));
    expect(framer.next()).toEqual(err("SERVER_ERROR object too large for cache"));
    for (let i = 0; i < 100; i++) {
      framer.push(Buffer.alloc(1000, 120));
      expect(framer.pending()).toBe(0);
    }
    framer.push(Buffer.from("\r\nversion\r\n"));
    expect(framer.next()).toEqual({ kind: "version" });
  });

  test("issue 9: a declared body is allocated as its bytes arrive, not when its header does", () => {
    const framer = createFramer({ maxLine: 8192, maxBody: 1 << 20 });
    const header = "set q 0 0 1048576\r\n";
    framer.push(Buffer.from(header));
    expect(framer.next()).toBeNull();
    let received = header.length;
    // In pieces of 1000 bytes, then of 64 KB: at most twice what arrived, plus 4 KB.
    for (const piece of [...Array<number>(100).fill(1000), ...Array<number>(14).fill(65536)]) {
      framer.push(Buffer.alloc(piece, 120));
      received += piece;
      expect(framer.next()).toBeNull();
      expect(framer.capacity()).toBeLessThanOrEqual(2 * received + 4096);
    }
    expect(framer.capacity()).toBeLessThanOrEqual((1 << 20) + 4096);
    framer.push(Buffer.alloc(header.length + (1 << 20) - received, 120));
    framer.push(Buffer.from("\r\nget q\r\n"));
    const set = framer.next();
    expect(set?.kind === "set" && set.data.length === 1 << 20 && set.data.every((b) => b === 120)).toBe(true);
    expect(plain(framer.next()!)).toEqual({ kind: "get", keys: [key("q")], withIds: false });
  });

  test("length 2147483647 is a valid length, refused as too large", () => {
    const framer = createFramer(LIMITS);
    framer.push(Buffer.from("set q 0 0 2147483647\r\n"));
    expect(framer.next()).toEqual(err("SERVER_ERROR object too large for cache"));
  });
});

describe("get options", () => {
  const parse = (k: string) => parseKey(Buffer.from(k), 0, k.length);
  test("nonsense combinations are refused", () => {
    for (const k of ["q/peek/open", "q/open/peek", "q/abort/close", "q/abort/open", "q/peek/abort", "q/t=5/abort",
      "q/bogus", "q/", "q//open", "q/open/open", "q/t=", "q/t=-1", "q/close/t=10"]) {
      expect(parse(k)).toBeNull();
    }
  });
  test("names are 1 to 250 printable bytes", () => {
    expect(parse("x".repeat(250))?.queue).toBe("x".repeat(250));
    expect(parse("x".repeat(251))).toBeNull();
    expect(parse("/open")).toBeNull();
  });
});
