/**
 * Issue 12 (DECISIONS #10): delayed delivery (`set q/delay=<ms>`) and retry with backoff
 * (`get q/abort/delay=<ms>`) over TCP against the real server, kill -9 included. Long delays are
 * crossed with the injected clock (MCQ_CLOCK_OFFSET_MS), not by waiting.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { runCommand, set, startServer, stopAll, tempDir, value, type Client } from "./harness";
import { dropStoreSchemas, startOn, STORES } from "./stores";

afterAll(async () => {
  await stopAll();
  await dropStoreSchemas();
});

const MINUTE_LATER = { MCQ_CLOCK_OFFSET_MS: "61000" };
const BAD = "CLIENT_ERROR bad command line format\r\n";

/** The `stats queue <q>` reply of a queue holding `items` messages of which `delayed` are delayed. */
async function counts(c: Client, q: string): Promise<{ items: number; delayed: number; open: number }> {
  const reply = await c.call(`stats queue ${q}\r\n`);
  const field = (name: string) => Number(new RegExp(`STAT ${name} (\\d+)\\r\\n`).exec(reply)?.[1] ?? -1);
  return { items: field("items"), delayed: field("delayed"), open: field("open") };
}

// On each store; what crosses a minute with the injected clock is SQLite's (postgres-features.test.ts waits instead).
describe.each(STORES)("set q/delay=<ms> on %s", (store) => {
  test("a delayed message is stored, counted, and hidden from get, peek and open; bad delays are refused", async () => {
    const server = await startOn(store);
    const c = await server.connect();
    expect(await c.call("set d/delay=60000 5 0 5\r\nlater\r\n")).toBe("STORED\r\n");
    expect(await c.call(set("d", "now"))).toBe("STORED\r\n");
    expect(await c.call("get d/peek\r\n")).toBe(value("d/peek", "now") + "END\r\n");
    expect(await c.call("get d\r\n")).toBe(value("d", "now") + "END\r\n");
    expect(await c.call("get d\r\nget d/open\r\nget d/peek\r\n")).toBe("END\r\nEND\r\nEND\r\n");
    expect(await counts(c, "d")).toEqual({ items: 1, delayed: 1, open: 0 });
    // The SPEC's six first, then the fields features add.
    expect(await c.call("stats queue d\r\n")).toMatch(
      /^STAT items 1\r\nSTAT bytes 5\r\nSTAT total 2\r\nSTAT fetched 1\r\nSTAT open 0\r\nSTAT oldest_age_ms \d+\r\nSTAT delayed 1\r\nSTAT deduplicated 0\r\nEND\r\n$/,
    );
    // Over 30 days, a negative or a repeated delay, an unknown option: bad names; the block is swallowed.
    const version = await c.call("version\r\n");
    for (const key of ["d/delay=2592000001", "d/delay=-5", "d/delay=1/delay=2", "d/later", "d/", `${"d".repeat(243)}/delay=1`]) {
      expect(await c.call(`set ${key} 0 0 1\r\nx\r\nversion\r\n`)).toBe(BAD + version);
    }
    expect(await c.call("set d/delay=2592000000 0 0 1\r\ny\r\n")).toBe("STORED\r\n");
    expect(await counts(c, "d")).toEqual({ items: 2, delayed: 2, open: 0 });
    // The queue a delayed set lands in is named without its options.
    expect(await c.call("stats queue\r\n")).toBe("STAT d 3/1\r\nEND\r\n");
    await server.kill();
  });

  test("a blocking get is served once the delay has run, in due order, and not before", async () => {
    const server = await startOn(store);
    const [c, waiter] = [await server.connect(), await server.connect()];
    const started = Date.now();
    expect(await c.call("set w/delay=400 0 0 6\r\nsecond\r\nset w/delay=200 0 0 5\r\nfirst\r\n")).toBe("STORED\r\nSTORED\r\n");
    expect(await waiter.call("get w/t=10000\r\n")).toBe(value("w/t=10000", "first") + "END\r\n");
    expect(Date.now() - started).toBeGreaterThanOrEqual(200);
    expect(await waiter.call("get w/t=10000\r\n")).toBe(value("w/t=10000", "second") + "END\r\n");
    expect(Date.now() - started).toBeGreaterThanOrEqual(400);
    expect(await counts(c, "w")).toEqual({ items: 0, delayed: 0, open: 0 });
    await server.kill();
  });

  test("abort/delay=0 and a plain abort put the message back at once, at the head", async () => {
    const server = await startOn(store);
    const c = await server.connect();
    await c.call(set("z", "one") + set("z", "two"));
    expect(await c.call("get z/open\r\n")).toBe(value("z/open", "one") + "END\r\n");
    expect(await c.call("get z/abort/delay=0\r\n")).toBe("END\r\n");
    expect(await c.call("get z\r\n")).toBe(value("z", "one") + "END\r\n");
    await server.kill();
  });
});

describe("set q/delay=<ms>", () => {
  test("kill -9: a delayed message is neither lost nor early after a restart, and comes once due", async () => {
    const home = join(tempDir(), "data");
    let server = await startServer([], home);
    let c = await server.connect();
    expect(await c.call("set k/delay=60000 0 0 7\r\ndelayed\r\n" + set("k", "plain"))).toBe("STORED\r\nSTORED\r\n");
    expect(await server.kill("SIGKILL")).not.toBe(0);

    server = await startServer([], home);
    c = await server.connect();
    expect(await counts(c, "k")).toEqual({ items: 2, delayed: 1, open: 0 });
    expect(await c.call("get k\r\nget k\r\n")).toBe(value("k", "plain") + "END\r\nEND\r\n");
    expect(await server.kill("SIGKILL")).not.toBe(0);

    // A minute later (the injected clock): due, and there once.
    server = await startServer([], home, undefined, MINUTE_LATER);
    c = await server.connect();
    expect(await c.call("get k\r\nget k\r\n")).toBe(value("k", "delayed") + "END\r\nEND\r\n");
    expect(await counts(c, "k")).toEqual({ items: 0, delayed: 0, open: 0 });
    expect(await c.call("stats queue\r\n")).toBe("STAT k 2/2\r\nEND\r\n");
    await server.kill();
  });
});

describe("get q/abort/delay=<ms>", () => {
  test("the aborted message comes back after the delay, behind what came meanwhile; kill -9 keeps it", async () => {
    const home = join(tempDir(), "data");
    let server = await startServer([], home);
    let c = await server.connect();
    await c.call(set("b", "job", 3));
    expect(await c.call("get b/open\r\n")).toBe(value("b/open", "job", 3) + "END\r\n");
    expect(await c.call("get b/abort/delay=60000\r\n")).toBe("END\r\n");
    // It is no longer open on this connection: a close is a no-op, and nothing is to be had.
    expect(await c.call("get b/close\r\nget b\r\nget b/open\r\n")).toBe("END\r\nEND\r\nEND\r\n");
    expect(await counts(c, "b")).toEqual({ items: 1, delayed: 1, open: 0 });
    expect(await c.call("get b/delay=5\r\nget b/open/delay=5\r\n")).toBe(BAD + BAD);
    expect(await server.kill("SIGKILL")).not.toBe(0);

    server = await startServer([], home);
    c = await server.connect();
    expect(await counts(c, "b")).toEqual({ items: 1, delayed: 1, open: 0 });
    expect(await c.call("get b\r\n")).toBe("END\r\n");
    await c.call(set("b", "newer"));
    await server.kill();

    server = await startServer([], home, undefined, MINUTE_LATER);
    c = await server.connect();
    expect(await c.call("get b\r\nget b\r\nget b\r\n")).toBe(value("b", "newer") + "END\r\n" + value("b", "job", 3) + "END\r\nEND\r\n");
    await server.kill();
  });
});

describe("dump and load (issue 12)", () => {
  test("carry the due time, the delivery count and the dedup tokens; the load keeps the delay", async () => {
    const server = await startServer();
    const c = await server.connect();
    await c.call("set q/delay=60000/id=tok 0 0 5\r\nlater\r\n" + set("q", "now") + set("q", "retry"));
    await c.call("get q\r\nget q/open\r\n");
    expect(await c.call("get q/abort/delay=60000\r\n")).toBe("END\r\n");
    expect(await server.kill()).toBe(0);
    const dumped = await runCommand(["dump", "-H", server.home]);
    expect([dumped.code, dumped.stderr]).toEqual([0, "dumped 2 messages\n"]);
    const lines = dumped.stdout.trimEnd().split("\n").map((l) => JSON.parse(l));
    const messages = lines.filter((l) => l.type === "message");
    expect(messages.map((l) => [Buffer.from(l.body, "base64").toString(), l.due > Date.now() + 50_000, l.deliveries])).toEqual([
      ["later", true, undefined],
      ["retry", true, 1],
    ]);
    expect(lines.filter((l) => l.type === "token")).toEqual([{ type: "token", queue: "q", token: "tok", until: expect.any(Number) }]);

    const file = join(tempDir(), "dump.jsonl");
    await Bun.write(file, dumped.stdout);
    const home = join(tempDir(), "restored");
    expect(await runCommand(["load", "-H", home, file])).toEqual({ code: 0, stdout: "", stderr: "loaded 2 messages\n" });
    let restored = await startServer([], home);
    let d = await restored.connect();
    expect(await d.call("get q\r\nset q/id=tok 0 0 1\r\nx\r\nstats queue q\r\n")).toMatch(
      /^END\r\nSTORED\r\nSTAT items 2\r\n[^]*STAT delayed 2\r\nSTAT deduplicated 1\r\nEND\r\n$/,
    );
    await restored.kill();
    restored = await startServer([], home, undefined, { MCQ_CLOCK_OFFSET_MS: "61000" });
    d = await restored.connect();
    expect(await d.call("get q\r\nget q\r\n")).toBe(value("q", "later") + "END\r\n" + value("q", "retry") + "END\r\n");
    await restored.kill();
  });
});
