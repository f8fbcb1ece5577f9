/** Data files that are not what they should be: foreign, corrupt, in use; and `mcq check`. */
import { afterAll, describe, expect, test } from "bun:test";
import { Database } from "bun:sqlite";
import { openSync, readFileSync, writeSync, closeSync } from "node:fs";
import { join } from "node:path";
import { runCommand, set, startServer, stopAll, tempDir } from "./harness";

afterAll(stopAll);

async function filledHome(): Promise<string> {
  const s = await startServer();
  const c = await s.connect();
  await c.call(Array.from({ length: 200 }, (_, i) => set(`q${i % 3}`, "x".repeat(500) + i)).join(""));
  expect(await s.kill()).toBe(0);
  return s.home;
}

describe("mcq check", () => {
  test("a sound directory: exit 0 and a summary", async () => {
    const home = await filledHome();
    const r = await runCommand(["check", "-H", home]);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(`ok: ${join(home, "mcq.db")}: 3 queues, 200 messages, ${200 * 500 + 490} bytes\n`);
  });

  test("after kill -9, the counters only the last batches recorded are folded in: check is ok, dump exact", async () => {
    const s = await startServer();
    const c = await s.connect();
    await c.call(Array.from({ length: 30 }, (_, i) => set(`k${i % 3}`, `m${i}`)).join("") + "get k0\r\nget k1\r\n");
    expect(await s.kill("SIGKILL")).not.toBe(0);
    const r = await runCommand(["check", "-H", s.home]);
    expect([r.code, r.stdout]).toEqual([0, `ok: ${join(s.home, "mcq.db")}: 3 queues, 28 messages, 76 bytes\n`]);
    const dump = (await runCommand(["dump", "-H", s.home])).stdout.split("\n").slice(1, 4).map((l) => JSON.parse(l));
    expect(dump).toEqual([
      { type: "queue", name: "k0", total: 10, fetched: 1 },
      { type: "queue", name: "k1", total: 10, fetched: 1 },
      { type: "queue", name: "k2", total: 10, fetched: 0 },
    ]);
  });

  test("refuses to run beside a server, and names a missing file", async () => {
    const s = await startServer();
    const busy = await runCommand(["check", "-H", s.home]);
    expect(busy.code).toBe(1);
    expect(busy.stderr).toContain("in use by another mcq process");
    const empty = await runCommand(["check", "-H", tempDir()]);
    expect([empty.code, empty.stderr.startsWith("mcq check: no data file")]).toEqual([1, true]);
  });

  test("a damaged file: the server refuses to start naming it, and check reports it", async () => {
    const home = await filledHome();
    const file = join(home, "mcq.db");
    const fd = openSync(file, "r+");
    writeSync(fd, Buffer.alloc(4096, 0xa5), 0, 4096, 4096 * 3); // page 4: inside the tables
    closeSync(fd);
    const start = await runCommand(["-p", "0", "-H", home]);
    expect(start.code).toBe(1);
    expect(start.stderr).toContain(file);
    const check = await runCommand(["check", "-H", home]);
    expect(check.code).toBe(1);
  });
});

test("someone else's SQLite database is refused and left unchanged", async () => {
  const home = tempDir();
  const file = join(home, "mcq.db");
  const db = new Database(file);
  db.run("CREATE TABLE accounts(id INTEGER PRIMARY KEY, balance INTEGER)");
  db.run("INSERT INTO accounts VALUES (1, 100)");
  db.close();
  const before = readFileSync(file);
  const r = await runCommand(["-p", "0", "-H", home]);
  expect(r.code).toBe(1);
  expect(r.stderr).toContain(`${file} is not an mcq data file`);
  expect(readFileSync(file).equals(before)).toBe(true);
});
