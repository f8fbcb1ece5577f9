/**
 * Issue 12: the counters of the queue features (`deduplicated`, `discarded`, `dead_lettered`,
 * `fanout_refused`) are kept with the queue's other counters, in the commit of the request they
 * count: `stats queue <q>` shows the same numbers after a kill -9 and after a clean restart, and
 * /metrics goes on exporting dead_lettered. On Postgres too (each node's counts in its own counter
 * rows, summed when read: docs/design.md), where `mcq dump --store` sums them over the rows (test/e2e/postgres-dump.test.ts).
 */
import { afterAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { metricsUrl, runCommand, set, startServer, stopAll, tempDir, value, type Client } from "./harness";
import { dropStoreSchemas, startOn, STORES } from "./stores";

afterAll(async () => {
  await stopAll();
  await dropStoreSchemas();
});

const TOML =
  '[queues."lim"]\nmax_items = 1\ndiscard_old = true\n' +
  '[queues."d"]\nmax_deliveries = 1\n' +
  '[queues."news+full"]\nmax_items = 1\n';

/** `stats queue <q>` of each queue, without the age of the oldest message (it grows). */
async function stats(c: Client): Promise<string> {
  let all = "";
  for (const q of ["lim", "q", "d", "d.dlq", "news", "news+full"]) {
    all += `${q}:\n` + (await c.call(`stats queue ${q}\r\n`)).replace(/STAT oldest_age_ms \d+\r\n/, "");
  }
  return all;
}

describe.each(STORES)("on %s", (store) => test("feature counters survive kill -9 and a restart exactly; /metrics still exports them", async () => {
  const file = join(tempDir(), "mcq.toml");
  await Bun.write(file, TOML);
  const args = ["--config", file, "--fanout", "--http", "127.0.0.1:0"];
  const server = await startOn(store, args);
  const c = await server.connect();
  // discarded: the second set to lim drops the first.
  expect(await c.call(set("lim", "a") + set("lim", "b"))).toBe("STORED\r\n".repeat(2));
  // deduplicated: the retry with the same token stores nothing.
  expect(await c.call("set q/id=t1 0 0 1\r\nx\r\nset q/id=t1 0 0 1\r\nx\r\n")).toBe("STORED\r\n".repeat(2));
  // dead_lettered: opened once (max_deliveries 1) and aborted, the message moves to d.dlq.
  expect(await c.call(set("d", "m") + "get d/open\r\nget d/abort\r\n")).toBe("STORED\r\n" + value("d/open", "m") + "END\r\nEND\r\n");
  // fanout_refused: the full child takes no copy of the second set.
  expect(await c.call("get news+full\r\n" + set("news", "1") + set("news", "2"))).toBe("END\r\nSTORED\r\nSTORED\r\n");
  const before = await stats(c);
  for (const line of ["discarded 1", "deduplicated 1", "dead_lettered 1", "fanout_refused 1"]) expect(before).toContain(`STAT ${line}\r\n`);
  expect(before.match(/STAT (discarded|deduplicated|dead_lettered|fanout_refused) [1-9]/g)).toHaveLength(4);

  expect(await server.kill("SIGKILL")).not.toBe(0);
  const crashed = await startOn(store, args, server.home);
  const d = await crashed.connect();
  expect(await stats(d)).toBe(before);
  // Counting goes on from the kept numbers.
  expect(await d.call("set q/id=t1 0 0 1\r\nx\r\n")).toBe("STORED\r\n");
  const after = before.replace("STAT deduplicated 1\r\n", "STAT deduplicated 2\r\n");
  expect(await stats(d)).toBe(after);
  expect(await crashed.kill()).toBe(0);

  const restarted = await startOn(store, args, server.home);
  const e = await restarted.connect();
  expect(await stats(e)).toBe(after);
  const text = await (await fetch(`${await metricsUrl(restarted.stderr)}/metrics`)).text();
  expect(text).toContain('mcq_queue_dead_lettered_total{queue="d"} 1\n');
  expect(await restarted.kill()).toBe(0);
  if (store === "sqlite") await dumpAndLoad(server.home, args, after);
}));

/** `mcq dump` carries the counters with total and fetched, and `mcq load` adds them to a queue's own. */
async function dumpAndLoad(home0: string, args: string[], after: string): Promise<void> {
  const server = { home: home0 };
  // dump carries them with total and fetched, and load adds them to a queue's own.
  const dumped = await runCommand(["dump", "-H", server.home]);
  expect(dumped.code).toBe(0);
  const queueLines = dumped.stdout.split("\n").filter((l) => l.includes('"type":"queue"'));
  expect(queueLines).toContain('{"type":"queue","name":"q","total":1,"fetched":0,"deduplicated":2}');
  expect(queueLines).toContain('{"type":"queue","name":"news+full","total":1,"fetched":0,"fanout_refused":1}');
  const file2 = join(tempDir(), "dump.jsonl");
  await Bun.write(file2, dumped.stdout);
  const home = join(tempDir(), "loaded");
  expect((await runCommand(["load", "-H", home, file2])).code).toBe(0);
  const loaded = await startServer(args, home);
  expect(await stats(await loaded.connect())).toBe(after);
  await loaded.kill();
}
