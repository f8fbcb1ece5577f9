/**
 * Issue 12 (DECISIONS #10): dead letters over TCP against the real server: --max-deliveries,
 * per-queue max_deliveries and dlq, the move atomic with the abort under kill -9, the counters,
 * the name-length rule, and redrive over the protocol and as `mcq redrive`.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { metricsUrl, runCommand, set, startServer, stopAll, tempDir, value, type Client } from "./harness";
import { dropStoreSchemas, startOn, STORES } from "./stores";

afterAll(async () => {
  await stopAll();
  await dropStoreSchemas();
});

async function stat(c: Client, q: string): Promise<Record<string, number | string>> {
  const reply = await c.call(`stats queue ${q}\r\n`);
  return Object.fromEntries([...reply.matchAll(/STAT (\S+) (\S+)\r\n/g)].map((m) => [m[1]!, /^\d+$/.test(m[2]!) ? Number(m[2]) : m[2]!]));
}

/** Opens and aborts the head of `q` once; returns what the open got. */
async function openAbort(c: Client, q: string): Promise<string> {
  const got = await c.call(`get ${q}/open\r\n`);
  expect(await c.call(`get ${q}/abort\r\n`)).toBe("END\r\n");
  return got;
}

describe.each(STORES)("dead letters on %s", (store) => {
  test("opened max_deliveries times without a close, a message moves to <q>.dlq; counters and settings show", async () => {
    const server = await startOn(store, ["--max-deliveries", "2"]);
    const c = await server.connect();
    await c.call(set("q", "poison") + set("q", "fine"));
    expect(await openAbort(c, "q")).toBe(value("q/open", "poison") + "END\r\n");
    expect(await openAbort(c, "q")).toBe(value("q/open", "poison") + "END\r\n");
    expect(await c.call("get q\r\nget q\r\n")).toBe(value("q", "fine") + "END\r\nEND\r\n");
    expect(await stat(c, "q")).toMatchObject({ items: 0, total: 2, fetched: 2, max_deliveries: 2, dlq: "q.dlq", dead_lettered: 1, dead_letter_skipped: 0 });
    expect(await stat(c, "q.dlq")).toMatchObject({ items: 1, total: 1, dead_lettered: 0 });
    // In the DLQ its count starts afresh: one abort there does not move it on.
    expect(await openAbort(c, "q.dlq")).toBe(value("q.dlq/open", "poison") + "END\r\n");
    expect(await stat(c, "q.dlq")).toMatchObject({ items: 1, dead_lettered: 0 });
    // A disconnect counts as well as an abort.
    await c.call(set("d", "x"));
    for (let i = 0; i < 2; i++) {
      const k = await server.connect();
      expect(await k.call("get d/open\r\n")).toBe(value("d/open", "x") + "END\r\n");
      k.close();
      const w = await server.connect();
      expect(await w.call(`get ${i === 0 ? "d" : "d.dlq"}/t=5000/peek\r\n`)).toBe(value(`${i === 0 ? "d" : "d.dlq"}/t=5000/peek`, "x") + "END\r\n");
    }
    await server.kill();
  });

  test("kill -9 right after the abort that moves it: the message is in exactly one queue", async () => {
    for (const waitForReply of [true, false]) {
      const home = join(tempDir(), "data");
      let server = await startOn(store, ["--max-deliveries", "1"], home);
      let c = await server.connect();
      await c.call(set("k", "only"));
      expect(await c.call("get k/open\r\n")).toBe(value("k/open", "only") + "END\r\n");
      if (waitForReply) expect(await c.call("get k/abort\r\n")).toBe("END\r\n");
      else c.write("get k/abort\r\n");
      expect(await server.kill("SIGKILL")).not.toBe(0);
      server = await startOn(store, ["--max-deliveries", "1"], home);
      c = await server.connect();
      const both = await c.call("get k\r\nget k.dlq\r\n");
      const [inQ, inDlq] = [both.includes("VALUE k 0 4"), both.includes("VALUE k.dlq 0 4")];
      expect(inQ !== inDlq).toBe(true);
      if (waitForReply) expect(inDlq).toBe(true);
      expect(await c.call("get k\r\nget k.dlq\r\n")).toBe("END\r\nEND\r\n");
      await server.kill();
    }
  });

  // A name too long for ".dlq" (247 bytes and more) cannot be opened over the wire (`/open` would
  // take the key past 250 bytes): test/unit/queue-limits.test.ts shows that rule.
  test("per-queue max_deliveries and dlq", async () => {
    const file = join(tempDir(), "mcq.toml");
    await Bun.write(file, '[queues."mail*"]\nmax_deliveries = 1\ndlq = "failed"\n[queues."x*"]\nmax_deliveries = 1\n');
    const server = await startOn(store, ["--config", file]);
    const c = await server.connect();
    const long = "x".repeat(240);
    await c.call(set("mail.1", "m") + set(long, "l") + set("other", "o"));
    await openAbort(c, "mail.1");
    await openAbort(c, long);
    await openAbort(c, "other");
    expect(await c.call("get failed\r\n")).toBe(value("failed", "m") + "END\r\n");
    expect(await c.call(`get ${long}.dlq\r\n`)).toBe(value(`${long}.dlq`, "l") + "END\r\n");
    expect(await stat(c, long)).toMatchObject({ dead_lettered: 1, dead_letter_skipped: 0 });
    expect(await stat(c, "other")).toMatchObject({ items: 1, max_deliveries: 0 });
    expect(await stat(c, "mail.1")).toMatchObject({ dlq: "failed", dead_lettered: 1 });
    await server.kill();
  });

  test("redrive <from> <to> answers OK <n> and moves the waiting messages in order", async () => {
    const server = await startOn(store);
    const c = await server.connect();
    await c.call(set("q.dlq", "a") + set("q.dlq", "b") + set("q", "c"));
    expect(await c.call("redrive q.dlq q\r\n")).toBe("OK 2\r\n");
    expect(await c.call("redrive nope q\r\nredrive q\r\nredrive a/b q\r\n")).toBe("OK 0\r\nERROR\r\nCLIENT_ERROR bad command line format\r\n");
    expect(await c.call("get q\r\nget q\r\nget q\r\n")).toBe(value("q", "c") + "END\r\n" + value("q", "a") + "END\r\n" + value("q", "b") + "END\r\n");
    // In one batch with what follows: the moved messages are there for the next get.
    expect(await c.call(set("r.dlq", "x") + "redrive r.dlq r\r\nget r\r\nstats queue r.dlq\r\n")).toMatch(
      new RegExp(`^STORED\r\nOK 1\r\n${value("r", "x")}END\r\nSTAT items 0\r\n`),
    );
    await server.kill();
  });
});

describe("mcq redrive", () => {
  test("does it offline, refused beside the running server", async () => {
    const server = await startServer();
    const c = await server.connect();
    await c.call(set("z.dlq", "1") + set("z.dlq", "2"));
    // Offline: refused beside the running server, then done once it has stopped.
    const busy = await runCommand(["redrive", "-H", server.home, "z.dlq", "z"]);
    expect([busy.code, busy.stderr.includes("stop the server first")]).toEqual([1, true]);
    expect(await server.kill()).toBe(0);
    expect(await runCommand(["redrive", "-H", server.home, "z.dlq", "z"])).toEqual({ code: 0, stdout: "OK 2\n", stderr: "" });
    const bad = await runCommand(["redrive", "-H", server.home, "z.dlq"]);
    expect(bad.code).toBe(2);
    const again = await startServer([], server.home);
    const d = await again.connect();
    expect(await d.call("get z\r\nget z\r\nget z.dlq\r\n")).toBe(value("z", "1") + "END\r\n" + value("z", "2") + "END\r\nEND\r\n");
    await again.kill();
  });
});

test("/metrics exports delayed and dead-lettered messages per queue", async () => {
  const server = await startServer(["--max-deliveries", "1", "--http", "127.0.0.1:0"]);
  const url = await metricsUrl(server.stderr);
  const c = await server.connect();
  await c.call("set m/delay=60000 0 0 1\r\nd\r\n" + set("m", "x"));
  await openAbort(c, "m");
  const text = await (await fetch(`${url}/metrics`)).text();
  expect(text).toContain('mcq_queue_delayed{queue="m"} 1\n');
  expect(text).toContain('mcq_queue_dead_lettered_total{queue="m"} 1\n');
  expect(text).toContain('mcq_queue_dead_lettered_total{queue="m.dlq"} 0\n');
  const json = (await (await fetch(`${url}/stats.json`)).json()) as { queues: { name: string }[] };
  expect(json.queues.find((q: { name: string }) => q.name === "m")).toMatchObject({ delayed: 1, deadLettered: 1 });
  await server.kill();
});
