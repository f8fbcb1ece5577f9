/** Kestrel's get options over TCP: reliable reads, blocking gets, leases. */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { set, startServer, stopAll, value, type Client, type Running } from "./harness";

let server: Running;
let n = 0;
const q = () => `r${++n}`;

beforeAll(async () => {
  server = await startServer();
});
afterAll(stopAll);

/** Polls `stats queue <q>` until its `open` line shows `want` (the server sees a close asynchronously). */
async function openCount(c: Client, queue: string, want: number): Promise<number> {
  for (let i = 0; i < 200; i++) {
    const got = Number(/STAT open (\d+)/.exec(await c.call(`stats queue ${queue}\r\n`))?.[1]);
    if (got === want) return got;
    await Bun.sleep(10);
  }
  return -1;
}

/** Waits until the server reports `want` waiting gets (the tests in a file run one at a time). */
async function waiters(c: Client, want: number): Promise<void> {
  for (let i = 0; i < 500; i++) {
    if ((await c.call("stats\r\n")).includes(`STAT waiters ${want}\r\n`)) return;
    await Bun.sleep(5);
  }
  throw new Error(`never saw ${want} waiters`);
}

describe("reliable reads", () => {
  test("peek does not remove; open hides from others; close removes", async () => {
    const [a, b, name] = [await server.connect(), await server.connect(), q()];
    await a.call(set(name, "m1") + set(name, "m2"));
    expect(await a.call(`get ${name}/peek\r\n`)).toBe(value(`${name}/peek`, "m1") + "END\r\n");
    expect(await a.call(`get ${name}/open\r\n`)).toBe(value(`${name}/open`, "m1") + "END\r\n");
    expect(await b.call(`get ${name}/peek\r\n`)).toBe(value(`${name}/peek`, "m2") + "END\r\n");
    expect(await a.call(`get ${name}/close\r\n`)).toBe("END\r\n");
    expect(await b.call(`get ${name}\r\nget ${name}\r\n`)).toBe(value(name, "m2") + "END\r\nEND\r\n");
    expect(await b.call(`stats queue ${name}\r\n`)).toContain("STAT fetched 2\r\n");
  });

  test("abort puts the message back at the head", async () => {
    const [a, name] = [await server.connect(), q()];
    await a.call(set(name, "m1") + set(name, "m2"));
    expect(await a.call(`get ${name}/open\r\nget ${name}/abort\r\nget ${name}\r\n`)).toBe(
      value(`${name}/open`, "m1") + "END\r\nEND\r\n" + value(name, "m1") + "END\r\n",
    );
  });

  test("a disconnect returns the open message to the head for the next consumer", async () => {
    const [a, b, name] = [await server.connect(), await server.connect(), q()];
    await a.call(set(name, "m1") + set(name, "m2"));
    expect(await a.call(`get ${name}/open\r\n`)).toBe(value(`${name}/open`, "m1") + "END\r\n");
    a.close();
    expect(await openCount(b, name, 0)).toBe(0);
    expect(await b.call(`get ${name}\r\n`)).toBe(value(name, "m1") + "END\r\n");
  });

  test("close/open confirms the last and opens the next; close alone is a no-op", async () => {
    const [a, name] = [await server.connect(), q()];
    await a.call(set(name, "m1") + set(name, "m2"));
    expect(await a.call(`get ${name}/close\r\n`)).toBe("END\r\n");
    expect(await a.call(`get ${name}/open\r\nget ${name}/close/open\r\nget ${name}/close/open\r\n`)).toBe(
      value(`${name}/open`, "m1") + "END\r\n" + value(`${name}/close/open`, "m2") + "END\r\nEND\r\n",
    );
    expect(await a.call(`stats queue ${name}\r\n`)).toContain("STAT items 0\r\n");
  });

  test("a second open on the same queue is refused; one per queue is fine", async () => {
    const [a, x, y] = [await server.connect(), q(), q()];
    await a.call(set(x, "1") + set(x, "2") + set(y, "3"));
    expect(await a.call(`get ${x}/open\r\n`)).toBe(value(`${x}/open`, "1") + "END\r\n");
    expect(await a.call(`get ${x}/open\r\n`)).toStartWith("CLIENT_ERROR ");
    expect(await a.call(`get ${y}/open\r\n`)).toBe(value(`${y}/open`, "3") + "END\r\n");
    expect(await a.call(`stats queue ${x}\r\n`)).toContain("STAT open 1\r\n");
  });

  test("bad options are refused and consume nothing", async () => {
    const [a, name] = [await server.connect(), q()];
    await a.call(set(name, "keep"));
    for (const opts of ["peek/open", "abort/close", "t=10/abort", "bogus", ""]) {
      expect(await a.call(`get ${name}/${opts}\r\n`)).toBe("CLIENT_ERROR bad command line format\r\n");
    }
    expect(await a.call(`get ${name}\r\n`)).toBe(value(name, "keep") + "END\r\n");
  });

  test("gets with /open shows the id of the open message", async () => {
    const [a, name] = [await server.connect(), q()];
    await a.call(set(name, "m"));
    const peeked = await a.call(`gets ${name}/peek\r\n`);
    expect(await a.call(`gets ${name}/open\r\n`)).toBe(peeked.replace("/peek ", "/open "));
  });
});

describe("blocking gets", () => {
  test("t=300 on an empty queue ends with END after about 300 ms", async () => {
    const [a, name] = [await server.connect(), q()];
    const t0 = performance.now();
    expect(await a.call(`get ${name}/t=300\r\n`)).toBe("END\r\n");
    const ms = performance.now() - t0;
    expect(ms).toBeGreaterThanOrEqual(290);
    expect(ms).toBeLessThan(2000);
  });

  test("a set wakes the waiter; others are served meanwhile", async () => {
    const [a, b, name] = [await server.connect(), await server.connect(), q()];
    const waiting = a.call(`get ${name}/t=5000\r\n`);
    await waiters(b, 1);
    const t0 = performance.now();
    expect(await b.call(set(name, "wake"))).toBe("STORED\r\n");
    expect(await waiting).toBe(value(`${name}/t=5000`, "wake") + "END\r\n");
    expect(performance.now() - t0).toBeLessThan(1000);
  });

  test("two waiters, one message: exactly one gets it, first come first served", async () => {
    const [a, b, c, name] = [await server.connect(), await server.connect(), await server.connect(), q()];
    const first = a.call(`get ${name}/t=1000\r\n`);
    await waiters(c, 1);
    const second = b.call(`get ${name}/t=1000\r\n`);
    await waiters(c, 2);
    await c.call(set(name, "only"));
    expect([await first, await second]).toEqual([value(`${name}/t=1000`, "only") + "END\r\n", "END\r\n"]);
  });

  test("200 waiters, each fed one message, all get theirs within 1 s", async () => {
    const name = q();
    const clients = await Promise.all(Array.from({ length: 200 }, () => server.connect()));
    const feeder = await server.connect();
    const waits = clients.map((c) => c.call(`get ${name}/t=10000\r\n`));
    await waiters(feeder, 200);
    const t0 = performance.now();
    await feeder.call(Array.from({ length: 200 }, (_, i) => set(name, `m${i}`)).join(""));
    const got = await Promise.all(waits);
    expect(performance.now() - t0).toBeLessThan(1000);
    expect(new Set(got).size).toBe(200);
    expect(got.every((r) => r.startsWith(`VALUE ${name}/t=10000 0 `))).toBe(true);
    clients.forEach((c) => c.close());
  });

  test("a waiter that disconnects loses nothing", async () => {
    const [a, b, name] = [await server.connect(), await server.connect(), q()];
    a.write(`get ${name}/t=5000\r\n`);
    await waiters(b, 1);
    a.close();
    await waiters(b, 0);
    expect(await b.call(set(name, "kept") + `get ${name}\r\n`)).toBe("STORED\r\n" + value(name, "kept") + "END\r\n");
  });

  test("a blocking open: the message that wakes the waiter is open", async () => {
    const [a, b, name] = [await server.connect(), await server.connect(), q()];
    const waiting = a.call(`get ${name}/t=3000/open\r\n`);
    await waiters(b, 1);
    await b.call(set(name, "w"));
    expect(await waiting).toBe(value(`${name}/t=3000/open`, "w") + "END\r\n");
    expect(await b.call(`get ${name}\r\n`)).toBe("END\r\n");
    expect(await a.call(`get ${name}/close\r\n`)).toBe("END\r\n");
  });
});

describe("limits on open messages", () => {
  test("--open-timeout returns a forgotten message, and the late close is told", async () => {
    const s = await startServer(["--open-timeout", "200"]);
    const [a, b] = [await s.connect(), await s.connect()];
    await a.call(set("lq", "leased"));
    expect(await a.call("get lq/open\r\n")).toBe(value("lq/open", "leased") + "END\r\n");
    expect(await openCount(b, "lq", 0)).toBe(0);
    expect(await b.call("get lq\r\n")).toBe(value("lq", "leased") + "END\r\n");
    expect(await a.call("get lq/close\r\n")).toBe("CLIENT_ERROR the open message's lease expired; it is back in its queue\r\n");
    await s.kill();
  });

  test("--max-open caps the open messages of one connection", async () => {
    const s = await startServer(["--max-open", "2"]);
    const a = await s.connect();
    await a.call(set("a", "1") + set("b", "2") + set("c", "3"));
    expect(await a.call("get a/open b/open\r\n")).toBe(value("a/open", "1") + value("b/open", "2") + "END\r\n");
    expect(await a.call("get c/open\r\n")).toBe("CLIENT_ERROR too many open messages on this connection\r\n");
    expect(await a.call("get a/close c/open\r\n")).toBe(value("c/open", "3") + "END\r\n");
    await s.kill();
  });
});
