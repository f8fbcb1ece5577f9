/**
 * One request, one reply; nothing acknowledged is lost: the paths where a blocking get, a slow
 * reader, a failed batch, a disconnect, a lease and a stop cross (issue "one reply per request").
 * Store failures are injected with MCQ_FAULTS (src/store/faults.ts) into the real server, over a
 * real SQLite store, so every failure here is a real rollback.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { serverCommand, set, startServer, stopAll, tempDir, value, type Client, type Running } from "./harness";

afterAll(stopAll);

const faulty = (faults: string, extra: string[] = []) => startServer(extra, join(tempDir(), "data"), serverCommand(), { MCQ_FAULTS: faults });

/** Polls `stats` until it shows `line`; the reply is awaited, never guessed by a sleep. */
async function statsShow(c: Client, command: string, line: string): Promise<void> {
  for (let i = 0; i < 1000; i++) {
    if ((await c.call(command)).includes(line)) return;
    await Bun.sleep(5);
  }
  throw new Error(`never saw ${JSON.stringify(line)} in ${command.trim()}`);
}

const MB = 1024 * 1024;

describe("a resumed blocking get waits once", () => {
  test("after its client drained megabytes of output, one get takes one message", async () => {
    const s = await startServer(["-B", String(2 * MB)]);
    const [a, b] = [await s.connect(), await s.connect()];
    const big = "b".repeat(MB);
    expect(await b.call(set("big", big))).toBe("STORED\r\n");
    // 12 MB of replies the client does not read yet, then a blocking get behind them.
    a.write("get big/peek\r\n".repeat(12) + "get e/t=4000\r\n");
    await statsShow(b, "stats\r\n", "STAT waiters 1\r\n");
    const peeks = (value("big/peek", big) + "END\r\n").length * 12;
    expect((await a.read(peeks)).length).toBe(peeks);
    expect(await b.call(set("e", "m1") + set("e", "m2"))).toBe("STORED\r\nSTORED\r\n");
    expect((await a.until((buf) => buf.toString("latin1").endsWith("END\r\n"))).toString("latin1")).toBe(value("e/t=4000", "m1") + "END\r\n");
    expect(await b.call("get e\r\n")).toBe(value("e", "m2") + "END\r\n");
    expect(await b.call("set e 0 0 2\r\nm3\r\n")).toBe("STORED\r\n");
    expect(await a.call("get e\r\n")).toBe(value("e", "m3") + "END\r\n");
  });

  test("a get behind more requests than one turn runs waits once", async () => {
    const s = await startServer();
    const [a, b] = [await s.connect(), await s.connect()];
    a.write("get none\r\n".repeat(3000) + "get f/t=4000\r\n");
    expect((await a.read(5 * 3000)).toString("latin1")).toBe("END\r\n".repeat(3000));
    await statsShow(b, "stats\r\n", "STAT waiters 1\r\n");
    expect(await b.call(set("f", "m1") + set("f", "m2"))).toBe("STORED\r\nSTORED\r\n");
    expect(await a.call("")).toBe(value("f/t=4000", "m1") + "END\r\n");
    expect(await b.call("get f\r\nstats\r\n")).toContain(value("f", "m2") + "END\r\nSTAT pid");
  });
});

describe("a failed batch ends each reply once", () => {
  test("a get whose reply holds a VALUE does not wait on its later keys", async () => {
    const s = await startServer();
    const a = await s.connect();
    await a.call(set("ma", "one"));
    expect(await a.call("get ma mw/t=2000\r\n")).toBe(value("ma", "one") + "END\r\n");
    // Judged by the server's count, not by a clock (a loaded machine delays any reply): had it
    // waited, the reply would have come once the wait ran out, which get_timeouts counts.
    expect(await a.call("stats\r\n")).toContain("STAT get_misses 1\r\nSTAT get_timeouts 0\r\n");
    // A wait with no VALUE before it does run out, once, and the keys after it are still served.
    expect(await a.call(set("ma", "two") + "get mw/t=20 ma\r\n")).toBe("STORED\r\n" + value("ma", "two") + "END\r\n");
    expect(await a.call("stats\r\n")).toContain("STAT get_misses 2\r\nSTAT get_timeouts 1\r\n");
  });

  test("a waiter served in a batch that fails gets one SERVER_ERROR, and nothing is lost", async () => {
    const s = await faulty("poison=fail-");
    const [a, b] = [await s.connect(), await s.connect()];
    a.write("get w/t=5000\r\n");
    await statsShow(b, "stats\r\n", "STAT waiters 1\r\n");
    // Both sets run in one batch; the first poisons its commit.
    expect(await b.call(set("fail-x", "x") + set("w", "hi"))).toBe("SERVER_ERROR injected failure\r\n".repeat(2));
    expect(await a.call("")).toBe("SERVER_ERROR injected failure\r\n");
    expect(await a.call(set("w", "again") + "get w\r\n")).toBe("STORED\r\n" + value("w", "again") + "END\r\n");
    expect(await b.call("stats queue w\r\n")).toBe(
      "STAT items 0\r\nSTAT bytes 0\r\nSTAT total 1\r\nSTAT fetched 1\r\nSTAT open 0\r\nSTAT oldest_age_ms 0\r\n" +
        "STAT delayed 0\r\nSTAT deduplicated 0\r\nEND\r\n",
    );
  });

  test("an abort in a failed batch leaves the message open to its owner, not to no one", async () => {
    const s = await faulty("poison=fail-");
    const a = await s.connect();
    await a.call(set("ab", "job"));
    expect(await a.call("get ab/open\r\n")).toBe(value("ab/open", "job") + "END\r\n");
    expect(await a.call(set("fail-x", "x") + "get ab/abort\r\n")).toBe("SERVER_ERROR injected failure\r\n".repeat(2));
    expect(await a.call("stats queue ab\r\n")).toContain("STAT open 1\r\n");
    expect(await a.call("get ab/abort\r\nget ab\r\n")).toBe("END\r\n" + value("ab", "job") + "END\r\n");
  });

  test("a get that fails after its wait (release, dequeue) answers one SERVER_ERROR; the server goes on", async () => {
    const s = await faulty("release=1");
    const a = await s.connect();
    expect(await a.call(set("rq", "m") + "get rq/open\r\n")).toBe("STORED\r\n" + value("rq/open", "m") + "END\r\n");
    expect(await a.call("get rx/t=200 rq/abort\r\n")).toBe("SERVER_ERROR injected failure\r\n");
    expect(await a.call("stats queue rq\r\n")).toContain("STAT open 1\r\n");
    // seed 8192: the first take (dx, empty) goes through, the second (dq2, after the wait) fails.
    const d = await faulty("dequeue=0.5,seed=8192");
    const b = await d.connect();
    expect(await b.call(set("dq2", "m"))).toBe("STORED\r\n");
    expect(await b.call("get dx/t=200 dq2\r\n")).toBe("SERVER_ERROR injected failure\r\n");
    expect(await b.call("get dq2\r\n")).toBe(value("dq2", "m") + "END\r\n");
    expect([s.proc.exitCode, d.proc.exitCode]).toEqual([null, null]);
  });

  test("a disconnect whose give-back fails returns the message later", async () => {
    // seed 32: the first release fails, the second succeeds.
    const s = await faulty("release=0.5,seed=32");
    const [a, b] = [await s.connect(), await s.connect()];
    await a.call(set("dq", "job"));
    expect(await a.call("get dq/open\r\n")).toBe(value("dq/open", "job") + "END\r\n");
    a.close();
    await statsShow(b, "stats queue dq\r\n", "STAT open 0\r\n");
    expect(s.stderr()).toContain("injected failure");
    expect(await b.call("get dq\r\n")).toBe(value("dq", "job") + "END\r\n");
  });

  test("a lease whose give-back fails expires again later", async () => {
    const s = await faulty("release=0.5,seed=32", ["--open-timeout", "100"]);
    const [a, b] = [await s.connect(), await s.connect()];
    await a.call(set("lq", "job"));
    expect(await a.call("get lq/open\r\n")).toBe(value("lq/open", "job") + "END\r\n");
    await statsShow(b, "stats queue lq\r\n", "STAT open 0\r\n");
    expect(s.stderr()).toContain("injected failure");
    expect(await b.call("get lq\r\n")).toBe(value("lq", "job") + "END\r\n");
    expect(await a.call("get lq/close\r\n")).toBe("CLIENT_ERROR the open message's lease expired; it is back in its queue\r\n");
  });
});

test("bytes_written counts every reply byte handed to a socket", async () => {
  const s = await startServer();
  const a = await s.connect();
  expect(await a.call(set("bw", "x") + "get bw\r\n")).toBe("STORED\r\n" + value("bw", "x") + "END\r\n");
  // STORED, the VALUE reply, and the VERSION line call() adds.
  const sent = "STORED\r\n".length + (value("bw", "x") + "END\r\n").length + "VERSION 1.0.0\r\n".length;
  expect(await a.call("stats\r\n")).toContain(`STAT bytes_written ${sent}\r\n`);
});

describe("leases: one reply, and a new open starts afresh", () => {
  test("close/open after an expiry is the error alone; the next open and close confirm", async () => {
    const s = await startServer(["--open-timeout", "150"]);
    const [a, b] = [await s.connect(), await s.connect()];
    await a.call(set("le", "m1") + set("le", "m2"));
    expect(await a.call("get le/open\r\n")).toBe(value("le/open", "m1") + "END\r\n");
    await statsShow(b, "stats queue le\r\n", "STAT open 0\r\n");
    expect(await a.call("get le/close/open\r\n")).toBe("CLIENT_ERROR the open message's lease expired; it is back in its queue\r\n");
    expect(await a.call("get le/open\r\n")).toBe(value("le/open", "m1") + "END\r\n");
    expect(await a.call("get le/close\r\n")).toBe("END\r\n");
    expect(await b.call("stats queue le\r\n")).toContain("STAT items 1\r\nSTAT bytes 2\r\nSTAT total 2\r\nSTAT fetched 1\r\nSTAT open 0\r\n");
  });
});

describe("stopping answers what was read", () => {
  test("SIGTERM with gets waiting and requests unanswered: each gets its reply, then exit 0", async () => {
    const s = await startServer();
    const [a, b, c] = [await s.connect(), await s.connect(), await s.connect()];
    a.write("get sa/t=10000\r\n");
    b.write("get sb/t=10000\r\n" + set("sx", "x") + "get sx\r\n");
    await statsShow(c, "stats\r\n", "STAT waiters 2\r\n");
    const code = s.kill("SIGTERM");
    expect(await a.closedBy()).toBe("END\r\n");
    expect(await b.closedBy()).toBe("END\r\nSTORED\r\n" + value("sx", "x") + "END\r\n");
    expect(await code).toBe(0);
  });
});

describe("memory per connection is bounded in bytes", () => {
  const rss = (s: Running) => {
    const status = require("node:fs").readFileSync(`/proc/${s.proc.pid}/status`, "latin1") as string;
    return Number(/VmRSS:\s+(\d+) kB/.exec(status)![1]) * 1024;
  };

  test("10,000 peeks of a 1 MB message from a client that reads nothing", async () => {
    const s = await startServer();
    const [a, b] = [await s.connect(), await s.connect()];
    expect(await b.call(set("pk", "p".repeat(MB - 100)))).toBe("STORED\r\n");
    const before = rss(s);
    a.socket.pause(); // the harness's client reads by itself; this one must not
    a.write("get pk/peek\r\n".repeat(10_000));
    // Whatever the reader does, others are served, and the server grows by well under 100 MB.
    let peak = 0;
    for (let i = 0; i < 40; i++) {
      expect(await b.call("version\r\n")).toBe("VERSION 1.0.0\r\n");
      peak = Math.max(peak, rss(s));
      await Bun.sleep(25);
    }
    expect(peak - before).toBeLessThan(100 * MB);
    a.close();
  });

  test("20 MB of pipelined gets from a client that reads its replies", async () => {
    const s = await startServer();
    const a = await s.connect();
    const before = rss(s);
    const n = 3_000_000;
    const chunk = "get x\r\n".repeat(10_000);
    for (let i = 0; i < n / 10_000; i++) a.write(chunk);
    let peak = 0;
    let got = 0;
    while (got < 5 * n) {
      got += (await a.until((buf) => buf.length > 0, 30_000)).length;
      peak = Math.max(peak, rss(s));
    }
    expect(got).toBe(5 * n);
    expect(peak - before).toBeLessThan(100 * MB);
  }, 60_000);
});

describe("limits across connections", () => {
  test("--max-queues: a set that would create one more queue is refused, and nothing else is", async () => {
    const s = await startServer(["--max-queues", "2"]);
    const c = await s.connect();
    expect(await c.call(set("q1", "a") + set("q2", "b") + set("q3", "c") + set("q1", "d"))).toBe(
      "STORED\r\nSTORED\r\nSERVER_ERROR too many queues\r\nSTORED\r\n",
    );
    expect(await c.call("stats queue\r\n")).toBe("STAT q1 2/0\r\nSTAT q2 1/0\r\nEND\r\n");
    expect(await c.call("delete q2\r\n" + set("q3", "c"))).toBe("DELETED\r\nSTORED\r\n");
  });

  test("--max-conn-memory: a partial request elsewhere never holds back one that can complete", async () => {
    const s = await startServer(["--max-conn-memory", "1", "-B", String(4 * MB)]);
    const [idle, a, c] = [await s.connect(), await s.connect(), await s.connect()];
    idle.write("g"); // a stray byte, and then silence
    await statsShow(c, "stats\r\n", "STAT buffered_bytes 1\r\n");
    const body = "a".repeat(2 * MB);
    expect(await a.call(`set big 0 0 ${body.length}\r\n${body}\r\n`)).toBe("STORED\r\n");
    expect(await c.call("stats\r\n")).toContain("STAT buffered_bytes 1\r\nSTAT over_budget_connections 0\r\n");
  });

  test("--max-conn-memory: past it, connections with output unsent run no more; the others go on", async () => {
    const s = await startServer(["--max-conn-memory", "4"]);
    const [good, c] = [await s.connect(), await s.connect()];
    expect(await good.call(set("pk", "p".repeat(MB - 100)))).toBe("STORED\r\n");
    const slow = await Promise.all(Array.from({ length: 8 }, () => s.connect()));
    for (const r of slow) {
      r.socket.pause(); // they never read
      r.write("get pk/peek\r\n".repeat(20));
    }
    // Once it settles: over the budget by at most one reply per connection and one turn's output.
    let last = -1;
    let now = 0;
    for (let i = 0; i < 200 && now !== last; i++) {
      last = now;
      await Bun.sleep(50);
      now = Number(/STAT buffered_bytes (\d+)/.exec(await c.call("stats\r\n"))![1]);
    }
    expect(now).toBeGreaterThan(4 * MB);
    expect(now).toBeLessThanOrEqual(4 * MB + 8 * (MB + 1024) + 4 * MB);
    expect(await c.call("stats\r\n")).toContain("STAT over_budget_connections 8\r\n");
    // A client that reads its replies is served all the while.
    expect(await good.call(set("other", "x") + "get other\r\n")).toBe("STORED\r\n" + value("other", "x") + "END\r\n");
    slow.forEach((r) => r.close());
    await statsShow(c, "stats\r\n", "STAT buffered_bytes 0\r\nSTAT over_budget_connections 0\r\n");
  });
});
