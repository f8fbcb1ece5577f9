/**
 * Every input that once broke MemcacheQ 0.2.1 (its known bugs, numbered B1…),
 * replayed against mcq. Each test is named after the bug it guards against.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { existsSync, readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { set, startServer, stopAll, value, type Client, type Running } from "./harness";

let server: Running;
let c: Client;
beforeAll(async () => {
  server = await startServer();
  c = await server.connect();
});
afterAll(stopAll);

test("B1: noreply is honoured and its data block is not parsed as a command", async () => {
  expect(await c.call("set b1 0 0 8 noreply\r\nquit\r\nab\r\nget b1\r\n")).toBe(value("b1", "quit\r\nab") + "END\r\n");
  expect(await c.call("set b1 0 0 1 noreply\r\nx\r\ndelete b1 noreply\r\nget b1\r\n")).toBe("END\r\n");
});

test("B2: a valid set pipelined after a bad one is stored", async () => {
  expect(await c.call("set b2 0 99999999999 1\r\nx\r\nset b2 0 0 1\r\ny\r\nget b2\r\n")).toBe(
    "CLIENT_ERROR bad command line format\r\nSTORED\r\n" + value("b2", "y") + "END\r\n",
  );
});

test("B3: negative lengths and 2147483647 are refused, the server stays up", async () => {
  for (const n of ["-1", "-2", "-3", "-100"]) {
    expect(await c.call(`set b3 0 0 ${n}\r\n`)).toBe("CLIENT_ERROR bad command line format\r\n");
  }
  // A valid length over -B: refused at once, and the block it announces is swallowed as it
  // comes, so this connection now waits for 2 GB of data; the server serves others meanwhile.
  const swallowing = await server.connect();
  swallowing.write("set b3 0 0 2147483647\r\nget b3\r\n");
  const refusal = "SERVER_ERROR object too large for cache\r\n";
  expect((await swallowing.read(refusal.length)).toString()).toBe(refusal);
  const fresh = await server.connect();
  expect(await fresh.call("get b3\r\n")).toBe("END\r\n");
});

test("B4: the data block of a refused set is swallowed, not executed", async () => {
  expect(await c.call("set b4 abc 0 13\r\nflush_all\r\nxx\r\n")).toBe("CLIENT_ERROR bad command line format\r\n");
});

test("B5: a multi-get with a 251-byte key consumes nothing and answers one error", async () => {
  await c.call(set("b5", "kept"));
  expect(await c.call(`get b5 ${"k".repeat(251)}\r\n`)).toBe("CLIENT_ERROR bad command line format\r\n");
  expect(await c.call("get b5\r\n")).toBe(value("b5", "kept") + "END\r\n");
});

test("B6/B7: file-like and path-like names are data; nothing is created outside -H", async () => {
  const names = ["queue.list", "log.0000000001", "__db.001", "mcq.db", "mcq.db-wal", ".", ".."];
  expect(await c.call(names.map((n) => set(n, n)).join(""))).toBe("STORED\r\n".repeat(names.length));
  expect(await c.call("set ../escaped 0 0 1\r\nx\r\n")).toBe("CLIENT_ERROR bad command line format\r\n");
  expect(await c.call(names.map((n) => `get ${n}\r\n`).join(""))).toBe(names.map((n) => value(n, n) + "END\r\n").join(""));
  expect(readdirSync(dirname(server.home))).toEqual(["data"]);
  expect(existsSync(join(dirname(server.home), "escaped"))).toBe(false);
});

test("B8: names of 248 to 250 bytes store and return messages", async () => {
  for (const n of [248, 249, 250]) {
    const name = "n".repeat(n);
    expect(await c.call(set(name, "ok") + `get ${name}\r\n`)).toBe("STORED\r\n" + value(name, "ok") + "END\r\n");
  }
});

test("B9: stats queue lists 1000 queues in full", async () => {
  const fresh = await startServer();
  const d = await fresh.connect();
  const names = Array.from({ length: 1000 }, (_, i) => `b9-${String(i).padStart(4, "0")}`);
  await d.call(names.map((n) => set(n, "x")).join(""));
  expect(await d.call("stats queue\r\n")).toBe(names.map((n) => `STAT ${n} 1/0\r\n`).join("") + "END\r\n");
});

test("B10: messages stored under a larger -B stay readable after a restart with a smaller one", async () => {
  const first = await startServer(["-B", "100"]);
  const d = await first.connect();
  expect(await d.call(set("b10", "x".repeat(100)))).toBe("STORED\r\n");
  await first.kill();
  const second = await startServer(["-B", "10"], first.home);
  const e = await second.connect();
  expect(await e.call("get b10\r\n")).toBe(value("b10", "x".repeat(100)) + "END\r\n");
  expect(await e.call(set("b10", "x".repeat(11)))).toBe("SERVER_ERROR object too large for cache\r\n");
});

test("B11: an endless line is cut off at 8192 bytes and the connection closed", async () => {
  const d = await server.connect();
  d.write("set " + "x".repeat(100_000));
  expect(await d.closedBy()).toBe("CLIENT_ERROR line too long\r\n");
});

test("B13: flags 4294967295 come back as 4294967295", async () => {
  expect(await c.call(set("b13", "f", 4294967295) + "get b13\r\n")).toBe("STORED\r\n" + value("b13", "f", 4294967295) + "END\r\n");
});
