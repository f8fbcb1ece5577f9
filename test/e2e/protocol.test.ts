/**
 * The wire contract over real TCP against a spawned server: exact bytes, pipelining,
 * every error row of docs/protocol.md, and the admin commands.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Client, set, startServer, stopAll, value, type Running } from "./harness";

let server: Running;
let c: Client;
let n = 0;
/** A queue name unique to this test. */
const q = (tag = "q") => `p${process.pid}-${++n}-${tag}`;

beforeAll(async () => {
  server = await startServer();
  c = await server.connect();
});
afterAll(stopAll);

describe("basic", () => {
  test("set then get, then the queue is empty", async () => {
    const name = q();
    expect(await c.call(set(name, "hello") + `get ${name}\r\nget ${name}\r\n`)).toBe(
      "STORED\r\n" + value(name, "hello") + "END\r\nEND\r\n",
    );
  });

  test("FIFO over 100 pipelined messages", async () => {
    const name = q();
    const bodies = Array.from({ length: 100 }, (_, i) => `m${i}`);
    expect(await c.call(bodies.map((b) => set(name, b)).join(""))).toBe("STORED\r\n".repeat(100));
    expect(await c.call(`get ${name}\r\n`.repeat(100))).toBe(bodies.map((b) => value(name, b) + "END\r\n").join(""));
  });

  test("flags are returned exactly, up to 2^32-1", async () => {
    const name = q();
    await c.call(set(name, "a", 0) + set(name, "b", 1) + set(name, "c", 4294967295));
    expect(await c.call(`get ${name}\r\n`.repeat(3))).toBe(
      value(name, "a", 0) + "END\r\n" + value(name, "b", 1) + "END\r\n" + value(name, "c", 4294967295) + "END\r\n",
    );
  });

  test("an empty body and a binary body with every byte value", async () => {
    const name = q();
    const all = Buffer.from(Array.from({ length: 256 }, (_, i) => i)).toString("latin1");
    const body = `\r\nEND\r\nset x 0 0 1\r\n\0${all}`;
    expect(await c.call(set(name, "") + set(name, body))).toBe("STORED\r\nSTORED\r\n");
    expect(await c.call(`get ${name} ${name}\r\n`)).toBe(value(name, "") + value(name, body) + "END\r\n");
  });

  test("noreply stores silently", async () => {
    const name = q();
    expect(await c.call(`set ${name} 0 0 2 noreply\r\nhi\r\n`)).toBe("");
    expect(await c.call(`get ${name}\r\n`)).toBe(value(name, "hi") + "END\r\n");
  });

  test("multi-key get answers in key order and skips empty queues", async () => {
    const [a, b, e] = [q("a"), q("b"), q("empty")];
    await c.call(set(a, "1") + set(b, "2") + set(a, "3"));
    expect(await c.call(`get ${b} ${e} ${a} ${a} ${a}\r\n`)).toBe(value(b, "2") + value(a, "1") + value(a, "3") + "END\r\n");
  });

  test("gets carries an id unique within the queue", async () => {
    const name = q();
    await c.call(set(name, "x") + set(name, "y"));
    const got = await c.call(`gets ${name} ${name}\r\n`);
    const ids = [...got.matchAll(/^VALUE \S+ 0 1 (\d+)\r\n/gm)].map((m) => Number(m[1]));
    expect(ids.length).toBe(2);
    expect(ids[1]).toBeGreaterThan(ids[0]!);
  });

  test("exptime is ignored without --expiry", async () => {
    const name = q();
    expect(await c.call(`set ${name} 0 1000000000 1\r\nx\r\nget ${name}\r\n`)).toBe("STORED\r\n" + value(name, "x") + "END\r\n");
  });
});

describe("framing", () => {
  test("bare \\n ends a line, runs of spaces separate tokens", async () => {
    const name = q();
    expect(await c.call(`set   ${name}  0 0   2\nok\r\nget  ${name} \n`)).toBe("STORED\r\n" + value(name, "ok") + "END\r\n");
  });

  test("a request split at every byte", async () => {
    const name = q();
    const request = set(name, "split") + `get ${name}\r\n`;
    for (const ch of request) {
      c.write(ch);
      await Bun.sleep(0);
    }
    expect(await c.call("")).toBe("STORED\r\n" + value(name, "split") + "END\r\n");
  });

  test("a line of 8192 bytes is accepted, 8193 is answered and closed", async () => {
    let line = "get";
    while (line.length + 251 <= 8192) line += " " + "k".repeat(250);
    line += " " + "z".repeat(8192 - line.length - 1);
    expect(line.length).toBe(8192);
    expect(await c.call(line + "\r\n")).toBe("END\r\n");
    const other = await server.connect();
    other.write(line + "x\r\n");
    expect(await other.closedBy()).toBe("CLIENT_ERROR line too long\r\n");
  });

  test("an endless line is refused without waiting for its end", async () => {
    const other = await server.connect();
    other.write("get " + "a".repeat(10_000));
    expect(await other.closedBy()).toBe("CLIENT_ERROR line too long\r\n");
  });
});

describe("errors keep the stream in sync", () => {
  const cases: [string, string, string][] = [
    ["unknown command", "bogus\r\n", "ERROR\r\n"],
    ["upper-case command", "GET x\r\n", "ERROR\r\n"],
    ["get without a key", "get\r\n", "ERROR\r\n"],
    ["set with 4 words: data not swallowed", "set a 0 0\r\nget nosuch-q\r\n", "ERROR\r\nEND\r\n"],
    ["set with 7 words", "set a 0 0 1 noreply x\r\n", "ERROR\r\n"],
    ["bytes -1: not swallowed", "set a 0 0 -1\r\n", "CLIENT_ERROR bad command line format\r\n"],
    ["bytes 5x", "set a 0 0 5x\r\n", "CLIENT_ERROR bad command line format\r\n"],
    ["bytes 2147483648", "set a 0 0 2147483648\r\n", "CLIENT_ERROR bad command line format\r\n"],
    ["flags abc: swallowed", "set a abc 0 5\r\nhello\r\n", "CLIENT_ERROR bad command line format\r\n"],
    ["flags 2^32: swallowed", "set a 4294967296 0 5\r\nhello\r\n", "CLIENT_ERROR bad command line format\r\n"],
    ["exptime abc: swallowed", "set a 0 abc 5\r\nhello\r\n", "CLIENT_ERROR bad command line format\r\n"],
    ["data longer than declared", "set a 0 0 5\r\nhelloXX\r\n", "CLIENT_ERROR bad data chunk\r\nERROR\r\n"],
    ["stats of something else", "stats slabs\r\n", "ERROR\r\n"],
    ["delete with a time", "delete a 10\r\n", "CLIENT_ERROR bad command line format\r\n"],
  ];
  for (const [name, input, reply] of cases) {
    test(name, async () => {
      expect(await c.call(input)).toBe(reply);
    });
  }

  test("a bad data chunk stores nothing", async () => {
    const name = q();
    expect(await c.call(`set ${name} 0 0 5\r\nhel\r\nXXget ${name}\r\n`)).toBe("CLIENT_ERROR bad data chunk\r\nEND\r\n");
  });

  test("bad names: too long, control bytes, slash, high bytes", async () => {
    for (const bad of ["x".repeat(251), "a\tb", "a/b", "a\x7fb", "a\x80b", "../x"]) {
      expect(await c.call(`set ${bad} 0 0 5\r\nhello\r\n`)).toBe("CLIENT_ERROR bad command line format\r\n");
      expect(await c.call(`get ${bad}\r\n`)).toBe("CLIENT_ERROR bad command line format\r\n");
    }
    expect(await c.call(`delete ${"x".repeat(251)}\r\nflush a\tb\r\n`)).toBe("CLIENT_ERROR bad command line format\r\n".repeat(2));
  });

  test("a multi-key get with one bad key consumes nothing", async () => {
    const name = q();
    await c.call(set(name, "keep"));
    expect(await c.call(`get ${name} ${"y".repeat(251)}\r\n`)).toBe("CLIENT_ERROR bad command line format\r\n");
    expect(await c.call(`get ${name}\r\n`)).toBe(value(name, "keep") + "END\r\n");
  });

  test("a body over the limit is swallowed and refused", async () => {
    const name = q();
    const big = "x".repeat(1048577);
    expect(await c.call(`set ${name} 0 0 ${big.length}\r\n${big}\r\nget ${name}\r\n`, 30_000)).toBe(
      "SERVER_ERROR object too large for cache\r\nEND\r\n",
    );
    const max = "y".repeat(1048576);
    expect(await c.call(set(name, max), 30_000)).toBe("STORED\r\n");
    expect((await c.call(`get ${name}\r\n`, 30_000)).length).toBe(value(name, max).length + 5);
  });
});

describe("admin", () => {
  test("delete, flush and flush_all", async () => {
    const [a, b] = [q("a"), q("b")];
    await c.call(set(a, "1") + set(b, "2"));
    expect(await c.call(`delete ${a}\r\ndelete ${a}\r\ndelete ${b} 0\r\n`)).toBe("DELETED\r\nNOT_FOUND\r\nDELETED\r\n");
    await c.call(set(a, "1"));
    expect(await c.call(`flush ${a}\r\nget ${a}\r\nflush ${a} noreply\r\ndelete ${a} noreply\r\n`)).toBe("OK\r\nEND\r\n");
    await c.call(set(b, "2"));
    expect(await c.call(`flush_all\r\nget ${b}\r\n`)).toBe("OK\r\nEND\r\n");
  });

  test("stats queue lists every queue sorted, with exact counters", async () => {
    const fresh = await startServer();
    const d = await fresh.connect();
    const names = ["b", "B", "a10", "a9", "a"];
    expect(await d.call(names.map((x) => set(x, "v")).join("") + set("a", "w") + "get a\r\n")).toBe(
      "STORED\r\n".repeat(6) + value("a", "v") + "END\r\n",
    );
    expect(await d.call("stats queue\r\n")).toBe(
      "STAT B 1/0\r\nSTAT a 2/1\r\nSTAT a10 1/0\r\nSTAT a9 1/0\r\nSTAT b 1/0\r\nEND\r\n",
    );
    expect(await d.call("stats queue a\r\n")).toMatch(
      /^STAT items 1\r\nSTAT bytes 1\r\nSTAT total 2\r\nSTAT fetched 1\r\nSTAT open 0\r\nSTAT oldest_age_ms \d+\r\nSTAT delayed 0\r\nSTAT deduplicated 0\r\nEND\r\n$/,
    );
    expect(await d.call("stats queue nosuch\r\n")).toBe("END\r\n");
    await fresh.kill();
  });

  test("stats counters move and stats reset zeroes them", async () => {
    const fresh = await startServer();
    const d = await fresh.connect();
    await d.call(set("s", "1") + "get s\r\nget s\r\n");
    const stats = Object.fromEntries(
      [...(await d.call("stats\r\n")).matchAll(/^STAT (\S+) (\S+)\r\n/gm)].map((m) => [m[1], m[2]]),
    );
    expect(stats).toMatchObject({ set_cmds: "1", set_hits: "1", get_cmds: "2", get_hits: "1", get_misses: "1", curr_items: "0", queues: "1", curr_connections: "1" });
    for (const f of ["pid", "uptime", "time", "version", "total_connections", "bytes_read", "bytes_written"]) expect(stats[f]).toBeDefined();
    expect(await d.call("stats reset\r\n")).toBe("RESET\r\n");
    expect(await d.call("stats\r\n")).toContain("STAT get_cmds 0\r\n");
    expect(await d.call("stats queue\r\n")).toBe("STAT s 1/1\r\nEND\r\n");
    await fresh.kill();
  });

  test("version, verbosity and quit", async () => {
    expect(await c.call("version\r\n")).toMatch(/^VERSION [1-9]\d*\.\d+\.\d+\r\n$/);
    expect(await c.call("verbosity 1\r\nverbosity 1 noreply\r\n")).toBe("OK\r\n");
    const other = await server.connect();
    const name = q();
    other.write(set(name, "last") + "quit\r\n");
    expect(await other.closedBy()).toBe("STORED\r\n");
    expect(await c.call(`get ${name}\r\n`)).toBe(value(name, "last") + "END\r\n");
  });
});
