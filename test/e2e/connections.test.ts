/**
 * Many connections, slow ones and silent ones: what each costs, and that none can hurt the
 * others. Bounds here are generous ceilings that catch a leak or a stall, not benchmarks.
 */
import { afterAll, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { connect } from "node:net";
import { Client, set, startServer, stopAll, value, type Running } from "./harness";

afterAll(stopAll);

const rss = (s: Running) => Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${s.proc.pid}/status`, "utf8"))![1]) * 1024;
const MB = 1024 * 1024;

test("3000 idle connections cost little and a fresh client is served at once", async () => {
  const s = await startServer(["-c", "4000"]);
  const probe = await s.connect();
  await probe.call("stats\r\n");
  const before = rss(s);
  const idle = await Promise.all(Array.from({ length: 3000 }, () => Client.connect(s.port)));
  // A client's connect completes in the kernel's backlog, before the server accepts it: wait
  // until the server counts every one (and holds its memory) before measuring.
  for (let i = 0; !(await probe.call("stats\r\n")).includes("STAT curr_connections 3001\r\n"); i++) {
    expect(i).toBeLessThan(2000);
    await Bun.sleep(5);
  }
  const grown = rss(s) - before;
  const fresh = await s.connect();
  const t0 = performance.now();
  expect(await fresh.call(set("idle", "x") + "get idle\r\n")).toBe("STORED\r\n" + value("idle", "x") + "END\r\n");
  const ms = performance.now() - t0;
  console.log(`3000 idle connections: RSS +${(grown / MB).toFixed(1)} MB, a fresh set+get in ${ms.toFixed(1)} ms`);
  expect(grown).toBeLessThan(60 * MB);
  expect(ms).toBeLessThan(500);
  idle.forEach((c) => c.close());
}, 60_000);

test("a client that never reads its replies is paused, and others are served meanwhile", async () => {
  const s = await startServer();
  const requests = 1_000_000;
  // A raw socket that writes a million requests and reads nothing until told to.
  const greedy = connect({ port: s.port, host: "127.0.0.1" });
  greedy.pause();
  await new Promise<void>((ok) => greedy.once("connect", () => ok()));
  greedy.write(Buffer.from("version\r\n".repeat(requests)));
  const other = await s.connect();
  for (let i = 0; i < 20; i++) {
    const t0 = performance.now();
    expect(await other.call(set("bp", `${i}`) + "get bp\r\n")).toBe("STORED\r\n" + value("bp", `${i}`) + "END\r\n");
    expect(performance.now() - t0).toBeLessThan(500);
  }
  const peak = rss(s);
  console.log(`a client not reading 1M replies: server RSS ${(peak / MB).toFixed(1)} MB`);
  expect(peak).toBeLessThan(200 * MB);
  // Now it reads: every reply arrives, in full.
  let got = 0;
  let tail = "";
  await new Promise<void>((ok) => {
    greedy.on("data", (chunk: Buffer) => {
      const text = tail + chunk.toString("latin1");
      const lines = text.split("\r\n");
      tail = lines.pop()!;
      got += lines.length;
      if (got >= requests) ok();
    });
    greedy.resume();
  });
  expect(got).toBe(requests);
  greedy.destroy();
}, 120_000);

test("--idle-timeout closes silent connections, not one waiting in a blocking get", async () => {
  const s = await startServer(["--idle-timeout", "1"]);
  const silent = await s.connect();
  const waiter = await s.connect();
  const t0 = performance.now();
  const waiting = waiter.call("get nothing/t=2500\r\n");
  expect(await silent.closedBy(5000)).toBe("");
  expect(performance.now() - t0).toBeGreaterThanOrEqual(900);
  expect(await waiting).toBe("END\r\n");
}, 30_000);

test("--idle-timeout closes a client that stopped reading, and what it was never sent goes back", async () => {
  const s = await startServer(["--idle-timeout", "1"]);
  const [slow, other] = [await s.connect(), await s.connect()];
  const big = "b".repeat(1024 * 1024 - 100);
  expect(await other.call(set("gone", big) + set("gone", "second"))).toBe("STORED\r\nSTORED\r\n");
  slow.socket.pause();
  slow.write("get gone/peek\r\n".repeat(40) + "get gone\r\n"); // never read: its output fills
  // Its socket is paused, so the client sees no close until it reads: watch the server's count.
  for (let i = 0; !(await other.call("stats\r\n")).includes("STAT curr_connections 1\r\n"); i++) {
    expect(i).toBeLessThan(400);
    await Bun.sleep(25);
  }
  // Its plain get's reply, if it was ever run, never reached the socket: the message is back.
  expect(await other.call("get gone\r\nget gone\r\n")).toBe(value("gone", big) + "END\r\n" + value("gone", "second") + "END\r\n");
}, 30_000);

test("SIGTERM with 1000 connected clients exits 0 within 5 s, answering what was read", async () => {
  const s = await startServer(["-c", "2000"]);
  const clients = await Promise.all(Array.from({ length: 1000 }, () => Client.connect(s.port)));
  const probe = await s.connect();
  // Half of them wait in a blocking get with a set and a version pipelined behind it, in one
  // write: once all 500 gets wait, the server has read those requests and answered none.
  const busy = clients.slice(0, 500);
  busy.forEach((c, i) => c.write(`get wait${i}/t=30000\r\n` + set(`stop${i % 10}`, `m${i}`) + "version\r\n"));
  for (let i = 0; !(await probe.call("stats\r\n")).includes("STAT waiters 500\r\n"); i++) {
    expect(i).toBeLessThan(2000);
    await Bun.sleep(5);
  }
  for (const c of busy) expect((await c.until(() => true)).length).toBe(0);
  const t0 = performance.now();
  const code = s.kill("SIGTERM");
  // Every request read gets its reply, in order (the waiter its END), then the connection closes.
  const replies = await Promise.all(clients.map((c) => c.closedBy(10_000)));
  expect(await code).toBe(0);
  const ms = performance.now() - t0;
  console.log(`SIGTERM with 1000 clients, 500 waiting with requests behind: exit 0 after ${ms.toFixed(0)} ms`);
  expect(ms).toBeLessThan(5000);
  expect(new Set(replies.slice(0, 500))).toEqual(new Set(["END\r\nSTORED\r\nVERSION 1.0.0\r\n"]));
  expect(new Set(replies.slice(500))).toEqual(new Set([""]));
  const again = await startServer([], s.home);
  const c = await again.connect();
  const queues = await c.call("stats queue\r\n");
  expect(queues.match(/^STAT stop\d \d+\/0\r\n/gm)?.reduce((n, line) => n + Number(/ (\d+)\//.exec(line)![1]), 0)).toBe(500);
}, 60_000);

// Seen in the stress test under load (seed 1949050797): a set whose body was still arriving
// behind a waiting get when SIGTERM came was never answered; the connection closed after END.
test("SIGTERM while a request behind a waiting get is half received: its rest is read, and it is answered", async () => {
  const s = await startServer();
  const [c, probe] = [await s.connect(), await s.connect()];
  c.write("get wait/t=30000\r\nset half 0 0 10\r\nhello");
  for (let i = 0; !(await probe.call("stats\r\n")).includes("STAT waiters 1\r\n"); i++) {
    expect(i).toBeLessThan(2000);
    await Bun.sleep(5);
  }
  probe.close();
  const code = s.kill("SIGTERM");
  for (let i = 0; !s.stderr().includes("SIGTERM: stopping"); i++) {
    expect(i).toBeLessThan(2000);
    await Bun.sleep(5);
  }
  expect((await c.read(5, 5000)).toString()).toBe("END\r\n"); // the waiter ends at once
  c.write("world\r\nget half\r\n");
  expect(await c.closedBy(10_000)).toBe("STORED\r\n" + value("half", "helloworld") + "END\r\n");
  expect(await code).toBe(0);
}, 30_000);

test("requests pipelined behind a blocking get wait, reading pauses past a bound, and all are answered in order", async () => {
  const s = await startServer(["-B", "1000"]);
  const [c, probe] = [await s.connect(), await s.connect()];
  const count = 20_000; // 180 KB behind the get: far past one line plus one body (9 KB)
  c.write("get pq/t=1000\r\n");
  while (!(await probe.call("stats\r\n")).includes("STAT waiters 1\r\n")) await Bun.sleep(5);
  // In pieces, each arriving while the get waits.
  for (let i = 0; i < 20; i++) {
    c.write("version\r\n".repeat(count / 20));
    await Bun.sleep(1);
  }
  const want = "END\r\n".length + count * "VERSION 1.0.0\r\n".length;
  const got = (await c.read(want, 10_000)).toString();
  expect(got.startsWith("END\r\nVERSION ")).toBe(true);
  expect(got.split("\r\n").filter((l) => l.startsWith("VERSION ")).length).toBe(count);
  expect(await c.call(set("pq", "after") + "get pq\r\n")).toBe("STORED\r\n" + value("pq", "after") + "END\r\n");
});
