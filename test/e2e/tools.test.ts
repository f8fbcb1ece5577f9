/**
 * The subcommands around a data directory: dump and load round-trip a backup, once per dump;
 * stats prints a table of a running server, over TCP or its unix socket.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { readLine, runCommand, serverCommand, set, startServer, stopAll, tempDir, value } from "./harness";

afterAll(stopAll);

const binary = String.fromCharCode(...Array.from({ length: 256 }, (_, i) => i));
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** A data directory with queues a (3 stored, 1 consumed) and b (1 stored), and its dump file. */
async function dumped() {
  const s = await startServer();
  const c = await s.connect();
  await c.call(set("a", "one", 1) + set("a", binary, 2) + set("a", "three", 4294967295) + set("b", "bee") + "get a\r\n");
  expect(await s.kill()).toBe(0);
  const r = await runCommand(["dump", "-H", s.home]);
  expect([r.code, r.stderr]).toEqual([0, "dumped 3 messages\n"]);
  const file = join(tempDir(), "backup.jsonl");
  await Bun.write(file, r.stdout);
  return { home: s.home, text: r.stdout, file };
}

describe("dump and load", () => {
  test("dump writes a header with a dump id, the queues, each message with its id, and an end line", async () => {
    const { text } = await dumped();
    const lines = text.trimEnd().split("\n").map((l) => JSON.parse(l));
    expect(lines[0]).toEqual({ type: "dump", format: 2, id: expect.stringMatching(UUID), created: expect.any(Number), mcq: expect.any(String), lastId: 4 });
    expect(lines.slice(1, 3)).toEqual([
      { type: "queue", name: "a", total: 3, fetched: 1 },
      { type: "queue", name: "b", total: 1, fetched: 0 },
    ]);
    expect(lines.slice(3, 6).map((l) => [l.queue, l.id, l.flags, Buffer.from(l.body, "base64").toString("latin1")])).toEqual([
      ["a", 2, 2, binary],
      ["a", 3, 4294967295, "three"],
      ["b", 4, 0, "bee"],
    ]);
    expect(lines.slice(6)).toEqual([{ type: "end", queues: 2, messages: 3 }]);
  });

  test("load into a fresh directory gives back the same queues, messages and counters", async () => {
    const { text, file } = await dumped();
    const home = join(tempDir(), "restored");
    expect(await runCommand(["load", "-H", home, file])).toEqual({ code: 0, stdout: "", stderr: "loaded 3 messages\n" });
    const again = await runCommand(["dump", "-H", home]);
    // The same lines, message ids included (a restore keeps them); only the header's dump id is new.
    const withoutId = (t: string) => t.replace(/"id":"[^"]+","created":\d+/, "");
    expect(withoutId(again.stdout)).toBe(withoutId(text));
    const restored = await startServer([], home);
    const d = await restored.connect();
    expect(await d.call("stats queue\r\n")).toBe("STAT a 3/1\r\nSTAT b 1/0\r\nEND\r\n");
    expect(await d.call("get a\r\nget a\r\nget b\r\n")).toBe(
      value("a", binary, 2) + "END\r\n" + value("a", "three", 4294967295) + "END\r\n" + value("b", "bee") + "END\r\n",
    );
    const busy = await runCommand(["dump", "-H", home, "--queue", "b"]);
    expect([busy.code, busy.stderr]).toEqual([1, `mcq dump: ${join(home, "mcq.db")} is in use by another mcq process; stop the server first\n`]);
  });

  test("a second load of the same dump adds nothing and says when it was loaded; --append adds it again", async () => {
    const { file } = await dumped();
    const home = join(tempDir(), "twice");
    expect((await runCommand(["load", "-H", home, file])).code).toBe(0);
    const id = JSON.parse((await Bun.file(file).text()).split("\n")[0]!).id;
    const second = await runCommand(["load", "-H", home, file]);
    expect(second.code).toBe(1);
    expect(second.stderr).toMatch(new RegExp(`^mcq load: dump ${id} was loaded into ${home} on \\S+Z; nothing loaded \\(--append loads it again\\)\\n$`));
    expect((await runCommand(["check", "-H", home])).stdout).toEndWith(": 2 queues, 3 messages, 264 bytes\n");
    expect(await runCommand(["load", "-H", home, "--append", file])).toEqual({ code: 0, stdout: "", stderr: "loaded 3 messages\n" });
    expect((await runCommand(["check", "-H", home])).stdout).toEndWith(": 2 queues, 6 messages, 528 bytes\n");
  });

  test("a dump cut short, or one with a bad line, loads nothing", async () => {
    const { text } = await dumped();
    const home = join(tempDir(), "d");
    const file = join(tempDir(), "bad.jsonl");
    const lines = text.trimEnd().split("\n");
    await Bun.write(file, lines.slice(0, -1).join("\n") + "\n");
    const cut = await runCommand(["load", "-H", home, file]);
    expect([cut.code, cut.stderr]).toEqual([1, "mcq load: the dump ends at line 6 without its end line (cut short?); nothing loaded\n"]);
    await Bun.write(file, [...lines.slice(0, 4), lines[4]!.replace('"queue":"a"', '"queue":"a/b"'), ...lines.slice(5)].join("\n"));
    const bad = await runCommand(["load", "-H", home, file]);
    expect([bad.code, bad.stderr]).toEqual([1, "mcq load: line 5: bad queue name\n"]);
    // A dump that failed before its first line (mcq dump … | mcq load -): an error, not "loaded 0".
    await Bun.write(file, "");
    expect(await runCommand(["load", "-H", home, file])).toEqual({ code: 1, stdout: "", stderr: "mcq load: the input is empty: not a dump\n" });
    expect((await runCommand(["check", "-H", home])).stdout).toEndWith(": 0 queues, 0 messages, 0 bytes\n");
  });

  test("a file of message lines alone (mcq 1.0.0's format, or written by hand) loads, with a note", async () => {
    const home = join(tempDir(), "d");
    const file = join(tempDir(), "old.jsonl");
    const line = (q: string) => JSON.stringify({ type: "message", queue: q, flags: 0, created: 1, expires: 0, body: "aGk=" });
    await Bun.write(file, `${line("q")}\n${line("other")}\n`);
    expect(await runCommand(["load", "-H", home, file])).toEqual({
      code: 0,
      stdout: "",
      stderr: "mcq load: note: this dump has no id (written by mcq 1.0.0): loading it twice would add its messages twice\nloaded 2 messages\n",
    });
    const only = await runCommand(["dump", "-H", home, "--queue", "q"]);
    expect(only.stdout.split("\n").slice(1)).toEqual([
      '{"type":"queue","name":"q","total":0,"fetched":0}',
      JSON.stringify({ type: "message", queue: "q", id: 1, flags: 0, created: 1, expires: 0, body: "aGk=" }),
      '{"type":"end","queues":1,"messages":1}',
      "",
    ]);
  });

  test("dump --queue of a queue that does not exist is an error naming it", async () => {
    const { home } = await dumped();
    const r = await runCommand(["dump", "-H", home, "--queue", "nosuch"]);
    expect(r).toEqual({ code: 1, stdout: "", stderr: `mcq dump: no queue nosuch in ${home}\n` });
  });

  test("load from stdin, and a file that does not exist is named", async () => {
    const { file } = await dumped();
    const home = join(tempDir(), "d");
    const proc = Bun.spawn([...serverCommand(), "load", "-H", home, "-"], {
      stdin: Bun.file(file), stdout: "pipe", stderr: "pipe",
    });
    expect([await proc.exited, await new Response(proc.stderr).text()]).toEqual([0, "loaded 3 messages\n"]);
    const missing = join(tempDir(), "nothing.jsonl");
    expect(await runCommand(["load", "-H", home, missing])).toEqual({ code: 1, stdout: "", stderr: `mcq load: cannot read ${missing}: no such file\n` });
  });
});

describe("stats", () => {
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

  test("mcq stats -s reaches a server on a unix socket", async () => {
    const dir = tempDir();
    const socket = join(dir, "mcq.sock");
    const proc = Bun.spawn([...serverCommand(), "-s", socket, "-H", join(dir, "d")], { stdout: "pipe", stderr: "pipe" });
    expect(await readLine(proc.stdout, (l) => l.includes(" listening on "))).toEndWith(` listening on ${socket}`);
    const r = await runCommand(["stats", "-s", socket]);
    proc.kill();
    expect(r).toEqual({ code: 0, stdout: "queue  items  bytes  total  fetched  open  oldest\n0 queues\n", stderr: "" });
    expect(await proc.exited).toBe(0);
  });

  test("mcq stats names the address it cannot reach, and why", async () => {
    const dir = tempDir();
    expect(await runCommand(["stats", "--addr", "127.0.0.1:1"])).toEqual({
      code: 1, stdout: "", stderr: "mcq stats: cannot connect to 127.0.0.1:1: connection refused\n",
    });
    expect(await runCommand(["stats", "-s", join(dir, "none.sock")])).toEqual({
      code: 1, stdout: "", stderr: `mcq stats: cannot connect to ${join(dir, "none.sock")}: no such file or directory\n`,
    });
  });
});
