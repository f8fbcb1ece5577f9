/**
 * Issue 12 (DECISIONS #10): per-queue limits and `[queues."<glob>"]` settings over TCP against the
 * real server: --max-items/--max-bytes, SERVER_ERROR queue full, discard_old, the most specific
 * glob, and the settings in force in `stats queue <q>`.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { queueStats, runCommand, set, startServer, stopAll, tempDir, value, type Client } from "./harness";
import { dropStoreSchemas, startOn, STORES, type StoreKind } from "./stores";

afterAll(async () => {
  await stopAll();
  await dropStoreSchemas();
});

const FULL = "SERVER_ERROR queue full\r\n";

async function withConfig(toml: string, extra: string[] = [], store: StoreKind = "sqlite", home = join(tempDir(), "data")) {
  const file = join(tempDir(), "mcq.toml");
  await Bun.write(file, toml);
  return startOn(store, ["--config", file, ...extra], home);
}

describe.each(STORES)("per-queue limits on %s", (store) => {
  test("--max-items: a set to a full queue is refused and stores nothing; a get makes room", async () => {
    const server = await startOn(store, ["--max-items", "2"]);
    const c = await server.connect();
    expect(await c.call(set("q", "a") + set("q", "b") + set("q", "c"))).toBe("STORED\r\nSTORED\r\n" + FULL);
    // noreply: no reply either way, and nothing stored.
    expect(await c.call("set q 0 0 1 noreply\r\nd\r\nget q\r\n")).toBe(value("q", "a") + "END\r\n");
    expect(await c.call(set("q", "e") + set("q", "f"))).toBe("STORED\r\n" + FULL);
    expect(await queueStats(c, "q")).toMatchObject({ items: 2, total: 3, max_items: 2, max_bytes: 0, discard_old: 0, discarded: 0 });
    // Open and delayed messages count: they are held.
    expect(await c.call("get q/open\r\n")).toBe(value("q/open", "b") + "END\r\n");
    expect(await c.call(set("q", "g"))).toBe(FULL);
    expect(await c.call("get q/close\r\n" + "set q/delay=60000 0 0 1\r\nh\r\n" + set("q", "i"))).toBe("END\r\nSTORED\r\n" + FULL);
    await server.kill();
  });
  test("--max-bytes counts bodies; a body larger than the limit is refused even with discard_old", async () => {
    const server = await withConfig('max-bytes = 10\n[queues."d*"]\ndiscard_old = true\n', [], store);
    const c = await server.connect();
    expect(await c.call(set("q", "12345") + set("q", "67890") + set("q", "x"))).toBe("STORED\r\nSTORED\r\n" + FULL);
    expect(await c.call(set("d", "12345678901"))).toBe(FULL);
    expect(await c.call(set("d", "123456") + set("d", "7890") + set("d", "abc"))).toBe("STORED\r\n".repeat(3));
    expect(await c.call("get d\r\nget d\r\nget d\r\n")).toBe(value("d", "7890") + "END\r\n" + value("d", "abc") + "END\r\nEND\r\n");
    expect(await queueStats(c, "d")).toMatchObject({ max_bytes: 10, discard_old: 1, discarded: 1 });
    await server.kill();
  });

  test("the most specific glob wins, then the first in the file; stats show the settings in force", async () => {
    const server = await withConfig(
      "max-items = 100\n" +
        '[queues."jobs.*"]\nmax_items = 3\n' +
        '[queues."jobs.mail*"]\nmax_items = 1\ndiscard_old = true\n' +
        '[queues."jobs.mail*x"]\nmax_items = 7\n' +
        '[queues."*"]\nmax_bytes = 1000\n',
      [],
      store,
    );
    const c = await server.connect();
    expect(await queueStats(c, "jobs.mail")).toEqual({}); // no such queue yet: END only
    await c.call(set("jobs.mail", "m1") + set("jobs.mail", "m2") + set("jobs.pdf", "p") + set("other", "o") + set("jobs.mailx", "x"));
    expect(await queueStats(c, "jobs.mail")).toMatchObject({ items: 1, max_items: 1, max_bytes: 0, discard_old: 1, discarded: 1 });
    expect(await c.call("get jobs.mail\r\n")).toBe(value("jobs.mail", "m2") + "END\r\n");
    // "jobs.mail*" and "jobs.mail*x" have the same literal prefix: the first in the file wins.
    expect(await queueStats(c, "jobs.mailx")).toMatchObject({ max_items: 1, discard_old: 1 });
    expect(await queueStats(c, "jobs.pdf")).toMatchObject({ max_items: 3, max_bytes: 0, discard_old: 0 });
    expect(await queueStats(c, "other")).toMatchObject({ max_items: 100, max_bytes: 1000 });
    await server.kill();
  });

  test("discard_old: the oldest messages that may be handed out go, in the set's commit; open and delayed ones stay", async () => {
    const home = join(tempDir(), "data");
    const server = await withConfig('[queues."d*"]\nmax_items = 2\ndiscard_old = true\n', [], store, home);
    const c = await server.connect();
    // Three sets in one batch: the third drops the first, which the same batch stored.
    expect(await c.call(set("d", "a") + set("d", "b") + set("d", "c"))).toBe("STORED\r\n".repeat(3));
    expect(await queueStats(c, "d")).toMatchObject({ items: 2, total: 3, fetched: 1, discarded: 1 });
    // The oldest is open: the next one goes.
    expect(await c.call("get d/open\r\n")).toBe(value("d/open", "b") + "END\r\n");
    expect(await c.call(set("d", "e"))).toBe("STORED\r\n");
    expect(await c.call("get d/close\r\nget d\r\nget d\r\n")).toBe("END\r\n" + value("d", "e") + "END\r\nEND\r\n");
    // Open and delayed messages alone fill it: refused, nothing dropped.
    expect(await c.call(set("d", "f") + "get d/open\r\n" + "set d/delay=60000 0 0 1\r\ng\r\n")).toBe("STORED\r\n" + value("d/open", "f") + "END\r\nSTORED\r\n");
    expect(await c.call(set("d", "h"))).toBe(FULL);
    expect(await queueStats(c, "d")).toMatchObject({ items: 2, open: 1, delayed: 1, total: 6, fetched: 4, discarded: 2 });
    // A set its token turns away drops nothing.
    expect(await c.call("get d/close\r\nset d/id=t 0 0 1\r\ni\r\n")).toBe("END\r\nSTORED\r\n");
    expect(await c.call("set d/id=t 0 0 1\r\nj\r\n")).toBe("STORED\r\n");
    expect(await queueStats(c, "d")).toMatchObject({ items: 2, delayed: 1, total: 7, deduplicated: 1, discarded: 2 });
    // Kept: counted in the commit that dropped them.
    expect(await server.kill("SIGKILL")).not.toBe(0);
    const again = await withConfig('[queues."d*"]\nmax_items = 2\ndiscard_old = true\n', [], store, home);
    const c2 = await again.connect();
    expect(await queueStats(c2, "d")).toMatchObject({ items: 2, total: 7, fetched: 5, discarded: 2 });
    expect(await c2.call("get d\r\nget d\r\n")).toBe(value("d", "i") + "END\r\nEND\r\n");
    await again.kill();
  });

  test("discard_old drops nothing for a set it cannot make room for (max_items lowered below the delayed messages)", async () => {
    const home = join(tempDir(), "data");
    const first = await withConfig('[queues."d*"]\nmax_items = 10\ndiscard_old = true\n', [], store, home);
    const c = await first.connect();
    const delayed = "set d/delay=60000 0 0 1\r\nx\r\n";
    expect(await c.call(delayed + delayed + set("d", "a") + set("d", "b"))).toBe("STORED\r\n".repeat(4));
    await first.kill();
    // Two waiting, two delayed, a limit of 2: dropping both waiting ones still leaves no room.
    const again = await withConfig('[queues."d*"]\nmax_items = 2\ndiscard_old = true\n', [], store, home);
    const c2 = await again.connect();
    expect(await c2.call(set("d", "c"))).toBe(FULL);
    expect(await queueStats(c2, "d")).toMatchObject({ items: 4, delayed: 2, total: 4, fetched: 0, discarded: 0 });
    expect(await c2.call("get d\r\nget d\r\nget d\r\n")).toBe(value("d", "a") + "END\r\n" + value("d", "b") + "END\r\nEND\r\n");
    await again.kill();
  });
});

describe("per-queue limits", () => {

  test("without limits, stats queue <q> shows no limit fields", async () => {
    const server = await startServer();
    const c = await server.connect();
    await c.call(set("q", "a"));
    expect(Object.keys(await queueStats(c, "q"))).toEqual(["items", "bytes", "total", "fetched", "open", "oldest_age_ms", "delayed", "deduplicated"]);
    await server.kill();
  });

  test("a bad queue table or limit stops the start with one line and exit 2", async () => {
    const cases: [string, string][] = [
      ['[queues."q*"]\nopen_timout = 3\n', 'mcq: --config FILE: [queues."q*"]: unknown key open_timout (known: max_items, max_bytes, discard_old, max_deliveries, dlq, fanout, open_timeout, expiry)'],
      ['[queues."q*"]\nopen_timeout = -1\n', 'mcq: --config FILE: [queues."q*"]: open_timeout must be a whole number from 0 (no lease) to 2147483647'],
      ['[queues."q*"]\nopen_timeout = 2147483648\n', 'mcq: --config FILE: [queues."q*"]: open_timeout must be a whole number from 0 (no lease) to 2147483647'],
      ['[queues."q*"]\nopen_timeout = "5s"\n', 'mcq: --config FILE: [queues."q*"]: open_timeout must be a whole number from 0 (no lease) to 2147483647'],
      ['[queues."q*"]\nexpiry = 0\n', 'mcq: --config FILE: [queues."q*"]: expiry must be true, false, or a lifetime in seconds from 1 to 2592000'],
      ['[queues."q*"]\nexpiry = 2592001\n', 'mcq: --config FILE: [queues."q*"]: expiry must be true, false, or a lifetime in seconds from 1 to 2592000'],
      ['[queues."q*"]\nexpiry = "yes"\n', 'mcq: --config FILE: [queues."q*"]: expiry must be true, false, or a lifetime in seconds from 1 to 2592000'],
      ['[queues."q*"]\ndlq = "a b"\n', 'mcq: --config FILE: [queues."q*"]: dlq must be a queue name (1 to 250 printable bytes without "/")'],
      ['[queues."q*"]\nmax_items = -1\n', 'mcq: --config FILE: [queues."q*"]: max_items must be a whole number from 0 (no limit) to 1000000000000'],
      ['[queues."q*"]\ndiscard_old = 1\n', 'mcq: --config FILE: [queues."q*"]: discard_old must be true or false'],
      ['[queues."a/b"]\nmax_items = 1\n', 'mcq: --config FILE: [queues."a/b"]: a glob is 1 to 250 printable bytes without "/"'],
      ["queues = 5\n", 'mcq: --config FILE: queues must be tables: [queues."<glob>"]'],
    ];
    for (const [toml, message] of cases) {
      const file = join(tempDir(), "bad.toml");
      await Bun.write(file, toml);
      const r = await runCommand(["--config", file, "-p", "0", "-H", join(tempDir(), "data")]);
      expect([r.code, r.stderr]).toEqual([2, message.replace("FILE", file) + "\n"]);
    }
    const r = await runCommand(["--max-items", "-1", "-p", "0"]);
    expect([r.code, r.stderr.split("\n").length, r.stderr.includes("--max-items")]).toEqual([2, 2, true]);
  });
});
