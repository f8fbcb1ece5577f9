/** The subcommands around a data directory: dump and load round-trip a backup; stats prints a table. */
import { afterAll, expect, test } from "bun:test";
import { join } from "node:path";
import { runCommand, set, startServer, stopAll, tempDir, value } from "./harness";

afterAll(stopAll);

const binary = String.fromCharCode(...Array.from({ length: 256 }, (_, i) => i));

test("mcq dump, then mcq load into a fresh directory, gives back the same queues, messages and counters", async () => {
  const s = await startServer();
  const c = await s.connect();
  await c.call(set("a", "one", 1) + set("a", binary, 2) + set("a", "three", 4294967295) + set("b", "bee") + "get a\r\n");
  expect(await s.kill()).toBe(0);
  const first = await runCommand(["dump", "-H", s.home]);
  expect([first.code, first.stderr]).toEqual([0, "dumped 3 messages\n"]);
  const lines = first.stdout.trimEnd().split("\n").map((l) => JSON.parse(l));
  expect(lines.slice(0, 2)).toEqual([
    { type: "queue", name: "a", total: 3, fetched: 1 },
    { type: "queue", name: "b", total: 1, fetched: 0 },
  ]);
  expect(lines.slice(2).map((l) => [l.queue, l.flags, Buffer.from(l.body, "base64").toString("latin1")])).toEqual([
    ["a", 2, binary],
    ["a", 4294967295, "three"],
    ["b", 0, "bee"],
  ]);
  const file = join(tempDir(), "backup.jsonl");
  await Bun.write(file, first.stdout);
  const home = join(tempDir(), "restored");
  expect(await runCommand(["load", "-H", home, file])).toEqual({ code: 0, stdout: "", stderr: "loaded 3 messages\n" });
  expect((await runCommand(["dump", "-H", home])).stdout).toBe(first.stdout);
  const restored = await startServer([], home);
  const d = await restored.connect();
  expect(await d.call("stats queue\r\n")).toBe("STAT a 3/1\r\nSTAT b 1/0\r\nEND\r\n");
  expect(await d.call("get a\r\nget a\r\nget b\r\n")).toBe(
    value("a", binary, 2) + "END\r\n" + value("a", "three", 4294967295) + "END\r\n" + value("b", "bee") + "END\r\n",
  );
  expect((await runCommand(["dump", "-H", home, "--queue", "b"])).code).toBe(1); // in use by the server
});

test("mcq load refuses a bad file whole, and dump --queue picks one queue", async () => {
  const home = join(tempDir(), "d");
  const good = JSON.stringify({ type: "message", queue: "q", flags: 0, created: 1, expires: 0, body: "aGk=" });
  const file = join(tempDir(), "bad.jsonl");
  await Bun.write(file, `${good}\n{"type":"message","queue":"a/b","flags":0,"created":1,"expires":0,"body":""}\n`);
  const r = await runCommand(["load", "-H", home, file]);
  expect([r.code, r.stderr]).toEqual([1, "mcq load: line 2: bad queue name\n"]);
  await Bun.write(file, `${good}\n${good.replace('"q"', '"other"')}\n`);
  expect((await runCommand(["load", "-H", home, file])).code).toBe(0);
  const only = await runCommand(["dump", "-H", home, "--queue", "q"]);
  expect(only.stdout).toBe(`{"type":"queue","name":"q","total":0,"fetched":0}\n${JSON.stringify({ type: "message", queue: "q", flags: 0, created: 1, expires: 0, body: "aGk=" })}\n`);
});

test("mcq stats --addr prints the queues of a running server as a table", async () => {
  const s = await startServer();
  const c = await s.connect();
  await c.call(set("jobs", "12345") + set("jobs", "6") + set("mail", "x") + "get mail\r\n");
  const r = await runCommand(["stats", "--addr", `127.0.0.1:${s.port}`]);
  expect(r.code).toBe(0);
  const rows = r.stdout.trimEnd().split("\n").map((l) => l.trim().split(/\s+/));
  expect(rows[0]).toEqual(["queue", "items", "bytes", "total", "fetched", "open", "oldest"]);
  expect(rows[1]!.slice(0, 6)).toEqual(["jobs", "2", "6", "2", "0", "0"]);
  expect(rows[2]).toEqual(["mail", "0", "0", "1", "1", "0", "-"]);
  expect(rows[3]).toEqual(["2", "queues"]);
});
