/**
 * Issue 12 (DECISIONS #10): the per-queue `open_timeout` and `expiry` of `[queues."<glob>"]` over
 * TCP against the real server. Two queues with different settings behave differently, a table
 * overrides the global flag (--open-timeout, --expiry) either way, and `stats queue <q>` shows the
 * settings in force. Expiry is tested across a restart with the clock moved on
 * (MCQ_CLOCK_OFFSET_MS) instead of waiting; leases with a blocking get that the lease's end serves.
 * Leases run on both stores (test/e2e/stores.ts). On Postgres a message's lifetime runs on
 * Postgres's clock, which no offset moves, so expiry there is tested with a 1 s lifetime.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { set, startServer, stopAll, tempDir, value, type Client } from "./harness";
import { dropStoreSchemas, startOn, STORES, type StoreKind } from "./stores";

afterAll(async () => {
  await stopAll();
  await dropStoreSchemas();
});

async function stat(c: Client, q: string): Promise<Record<string, string>> {
  const reply = await c.call(`stats queue ${q}\r\n`);
  return Object.fromEntries([...reply.matchAll(/STAT (\S+) (\S+)\r\n/g)].map((m) => [m[1]!, m[2]!]));
}

async function withConfig(toml: string, extra: string[] = [], home?: string, env: Record<string, string> = {}, store: StoreKind = "sqlite") {
  const file = join(tempDir(), "mcq.toml");
  await Bun.write(file, toml);
  return store === "sqlite" ? startServer(["--config", file, ...extra], home, undefined, env) : startOn(store, ["--config", file, ...extra], home, env);
}

const EXPIRED = "CLIENT_ERROR the open message's lease expired; it is back in its queue\r\n";

for (const store of STORES) describe(`open_timeout per queue (${store})`, () => {
  test("a table alone gives its queues a lease; other queues keep theirs open; stats show it", async () => {
    const server = await withConfig('[queues."fast.*"]\nopen_timeout = 100\n', [], undefined, {}, store);
    const [a, b] = [await server.connect(), await server.connect()];
    await a.call(set("fast.a", "f") + set("plain", "p"));
    const opened = Date.now(); // before the server's open, so the lease ends at least 100 ms after this
    expect(await a.call("get fast.a/open plain/open\r\n")).toBe(value("fast.a/open", "f") + value("plain/open", "p") + "END\r\n");
    // The lease's end puts the message back, which serves the waiting get.
    expect(await b.call("get fast.a/t=5000\r\n")).toBe(value("fast.a/t=5000", "f") + "END\r\n");
    expect(Date.now() - opened).toBeGreaterThanOrEqual(100);
    // plain has no lease: still open after as long again.
    expect(await b.call("get plain/t=300\r\n")).toBe("END\r\n");
    expect(await a.call("get fast.a/close plain/close\r\n")).toBe(EXPIRED);
    expect(await a.call("get plain/close\r\n")).toBe("END\r\n");
    expect(await stat(a, "fast.a")).toMatchObject({ open: "0", open_timeout: "100" });
    expect(await stat(a, "plain")).toMatchObject({ fetched: "1", open_timeout: "0" });
    await server.kill();
  });

  test("tables override --open-timeout both ways; touch renews for the queue's own lease", async () => {
    const server = await withConfig('[queues."keep.*"]\nopen_timeout = 0\n[queues."slow.*"]\nopen_timeout = 60000\n', ["--open-timeout", "100"], undefined, {}, store);
    const [a, b] = [await server.connect(), await server.connect()];
    await a.call(set("keep.a", "k") + set("slow.a", "s") + set("other", "o"));
    await a.call("get keep.a/open slow.a/open other/open\r\n");
    expect(await b.call("get other/t=5000\r\n")).toBe(value("other/t=5000", "o") + "END\r\n"); // the global lease
    expect(await b.call("get keep.a/t=300 slow.a/t=300\r\n")).toBe("END\r\n");
    expect(await a.call("get slow.a/touch\r\nget keep.a/touch\r\n")).toBe("END\r\nEND\r\n");
    expect(await a.call("get keep.a/close\r\nget slow.a/close\r\nget other/close\r\n")).toBe("END\r\nEND\r\n" + EXPIRED);
    expect([(await stat(a, "keep.a")).open_timeout, (await stat(a, "slow.a")).open_timeout, (await stat(a, "other")).open_timeout])
      .toEqual(["0", "60000", "100"]);
    await server.kill();
  });

  test("without any open timeout, stats queue <q> has no open_timeout field", async () => {
    const server = await withConfig('[queues."q*"]\nopen_timeout = 0\n', [], undefined, {}, store);
    const c = await server.connect();
    await c.call(set("q", "a"));
    expect(Object.keys(await stat(c, "q"))).toEqual(["items", "bytes", "total", "fetched", "open", "oldest_age_ms", "delayed", "deduplicated"]);
    await server.kill();
  });
});

describe("expiry per queue", () => {
  /** Sets, then a restart two minutes later (the clock moved), and what each get finds. */
  async function later(toml: string, extra: string[], sets: string, gets: string[]) {
    const server = await withConfig(toml, extra);
    const c = await server.connect();
    expect(await c.call(sets)).toBe("STORED\r\n".repeat(sets.split("set ").length - 1));
    const settings: Record<string, string | undefined> = {};
    for (const q of gets) settings[q] = (await stat(c, q)).expiry;
    expect(await server.kill("SIGKILL")).not.toBe(0); // STORED is durable: a kill -9 loses nothing
    const again = await withConfig(toml, extra, server.home, { MCQ_CLOCK_OFFSET_MS: "120000" });
    const d = await again.connect();
    const found: Record<string, string> = {};
    for (const q of gets) found[q] = (await d.call(`get ${q}\r\n`)).replace(/^VALUE \S+ \d+ \d+\r\n/, "").replace(/\r\nEND\r\n$|END\r\n$/, "");
    await again.kill();
    return { settings, found };
  }

  test("a table's lifetime, exptime honoured or ignored, next to a queue that has none", async () => {
    const toml = '[queues."short.*"]\nexpiry = 60\n[queues."raw.*"]\nexpiry = true\n';
    const { settings, found } = await later(toml, [],
      "set short.a 0 0 1\r\n1\r\nset short.b 0 3600 1\r\n2\r\nset raw.a 0 30 1\r\n3\r\nset raw.b 0 0 1\r\n4\r\nset plain 0 30 1\r\n5\r\n",
      ["short.a", "short.b", "raw.a", "raw.b", "plain"]);
    expect(settings).toEqual({ "short.a": "60", "short.b": "60", "raw.a": "true", "raw.b": "true", plain: "false" });
    // short.a: exptime 0 takes the 60 s lifetime; short.b: its own exptime wins. raw: exptime
    // only. plain: no --expiry, its exptime is ignored.
    expect(found).toEqual({ "short.a": "", "short.b": "2", "raw.a": "", "raw.b": "4", plain: "5" });
  });

  test("a table turns --expiry off for its queues, or gives them a lifetime on top of it", async () => {
    const toml = '[queues."keep.*"]\nexpiry = false\n[queues."short.*"]\nexpiry = 90\n';
    const { settings, found } = await later(toml, ["--expiry"],
      "set keep.a 0 30 1\r\n1\r\nset short.a 0 0 1\r\n2\r\nset other 0 30 1\r\n3\r\nset other2 0 0 1\r\n4\r\n",
      ["keep.a", "short.a", "other", "other2"]);
    expect(settings).toEqual({ "keep.a": "false", "short.a": "90", other: "true", other2: "true" });
    expect(found).toEqual({ "keep.a": "1", "short.a": "", other: "", other2: "4" });
  });

  test("the housekeeping sweep runs for a table's expiry alone: expired messages leave curr_items", async () => {
    const toml = '[queues."short.*"]\nexpiry = 1\n';
    const server = await withConfig(toml);
    const c = await server.connect();
    await c.call(set("short.a", "x") + set("plain", "y"));
    expect(await server.kill()).toBe(0);
    const again = await withConfig(toml, [], server.home, { MCQ_CLOCK_OFFSET_MS: "5000" });
    const d = await again.connect();
    // No get touches short.a: only the sweep (every 200 ms) can delete it.
    let stats = "";
    for (let i = 0; i < 100 && !stats.includes("STAT expired_items 1\r\n"); i++) {
      if (i > 0) await Bun.sleep(50);
      stats = await d.call("stats\r\n");
    }
    expect(stats).toContain("STAT curr_items 1\r\nSTAT open_items 0\r\nSTAT expired_items 1\r\n");
    await again.kill();
  });
});

describe.if(STORES.includes("postgres"))("expiry per queue (postgres)", () => {
  test("a table's lifetime and a table that turns --expiry off, on Postgres's clock", async () => {
    const toml = '[queues."short.*"]\nexpiry = 1\n[queues."keep.*"]\nexpiry = false\n';
    const server = await withConfig(toml, ["--expiry"], undefined, {}, "postgres");
    const c = await server.connect();
    const sets = "set short.a 0 0 1\r\n1\r\nset keep.a 0 1 1\r\n2\r\nset other 0 1 1\r\n3\r\nset other2 0 0 1\r\n4\r\n";
    expect(await c.call(sets)).toBe("STORED\r\n".repeat(4));
    const settings: Record<string, string | undefined> = {};
    for (const q of ["short.a", "keep.a", "other", "other2"]) settings[q] = (await stat(c, q)).expiry;
    expect(settings).toEqual({ "short.a": "1", "keep.a": "false", other: "true", other2: "true" });
    // A lifetime of 1 s must pass on Postgres's clock: the sweep (every 200 ms) then deletes
    // short.a (the table's lifetime) and other (its exptime); keep.a's exptime is ignored.
    let stats = "";
    for (const deadline = Date.now() + 10_000; Date.now() < deadline && !stats.includes("STAT expired_items 2\r\n"); ) {
      await Bun.sleep(100);
      stats = await c.call("stats\r\n");
    }
    expect(stats).toContain("STAT curr_items 2\r\nSTAT open_items 0\r\nSTAT expired_items 2\r\n");
    expect(await c.call("get short.a\r\nget keep.a\r\nget other\r\nget other2\r\n"))
      .toBe("END\r\n" + value("keep.a", "2") + "END\r\nEND\r\n" + value("other2", "4") + "END\r\n");
    await server.kill();
  });
});
