/**
 * scripts/bench/minimal-durable.ts (issue 15, design (a) idealised): it speaks the subset mcbench
 * uses byte for byte in every mode, and its durable modes really wrote what they acknowledged: after
 * the replies came back the server is killed (kill -9 for the Worker mode: nothing is flushed on the
 * way out) and the SQLite file holds exactly the messages stored and not taken.
 */
import { Database } from "bun:sqlite";
import { afterAll, expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { join, resolve } from "node:path";
import { Client, set, startServer, stopAll, tempDir, value } from "./harness";

afterAll(stopAll);

const ROOT = resolve(import.meta.dir, "../..");
const SCRIPT = join(ROOT, "scripts/bench/minimal-durable.ts");
const COMMAND = [process.execPath, SCRIPT];

function rows(home: string): { queue: string; flags: number; body: string }[] {
  const db = new Database(join(home, "minimal-durable.db"), { readonly: false });
  try {
    return db.query<{ queue: string; flags: number; body: Uint8Array }, []>("SELECT queue, flags, body FROM messages ORDER BY id").all()
      .map((r) => ({ queue: r.queue, flags: r.flags, body: Buffer.from(r.body).toString("latin1") }));
  } finally {
    db.close();
  }
}

/** The pair exchange mcbench makes, a request split inside its body, and what is not spoken. */
async function speaks(port: number): Promise<void> {
  const c = await Client.connect(port);
  c.write(set("q", "one", 7) + set("q", "two") + "get q\r\nget q\r\nget q\r\nget other\r\nstats\r\n");
  const expected = "STORED\r\nSTORED\r\n" + value("q", "one", 7) + "END\r\n" + value("q", "two") + "END\r\nEND\r\nEND\r\nERROR\r\n";
  expect((await c.read(expected.length)).toString("latin1")).toBe(expected);
  const request = set("split", "x".repeat(100)) + "get split\r\n";
  for (let i = 0; i < request.length; i += 7) c.write(request.slice(i, i + 7));
  const reply = "STORED\r\n" + value("split", "x".repeat(100)) + "END\r\n";
  expect((await c.read(reply.length)).toString("latin1")).toBe(reply);
  c.close();
}

/** Ten sets acknowledged, then three of them taken in a later batch: seven rows must be on disk. */
async function storesSevenOfTen(port: number): Promise<void> {
  const c = await Client.connect(port);
  let sets = "";
  for (let i = 1; i <= 10; i++) sets += set("d", `m${i}`, i);
  c.write(sets);
  expect((await c.read(80)).toString("latin1")).toBe("STORED\r\n".repeat(10));
  c.write("get d\r\nget d\r\nget d\r\n");
  const taken = value("d", "m1", 1) + "END\r\n" + value("d", "m2", 2) + "END\r\n" + value("d", "m3", 3) + "END\r\n";
  expect((await c.read(taken.length)).toString("latin1")).toBe(taken);
  c.close();
}

const SEVEN = Array.from({ length: 7 }, (_, i) => ({ queue: "d", flags: i + 4, body: `m${i + 4}` }));

for (const sync of ["full", "normal"]) {
  test(`--durable worker --sync ${sync}: exact replies, and after kill -9 the file holds what was acknowledged`, async () => {
    const server = await startServer(["--durable", "worker", "--sync", sync], undefined, COMMAND);
    await speaks(server.port);
    await storesSevenOfTen(server.port);
    expect(await server.kill("SIGKILL")).toBe(137);
    // The exchange of speaks() left nothing (every message set was taken, in the same batch or later).
    expect(rows(server.home)).toEqual(SEVEN);
  });
}

test("--durable main: the same on the main thread; SIGTERM prints the batches' figures and exits 0", async () => {
  const server = await startServer(["--durable", "main", "--sync", "normal"], undefined, COMMAND);
  await speaks(server.port);
  await storesSevenOfTen(server.port);
  expect(await server.kill("SIGTERM")).toBe(0);
  expect(server.stderr()).toMatch(/^minimal-durable: \d+ batches, [\d.]+ requests, [\d.]+ rows written and [\d.]+ deleted a batch; \d+ us from closing a batch to its replies\n$/);
  expect(rows(server.home)).toEqual(SEVEN);
});

test("--durable none writes no file", async () => {
  const home = join(tempDir(), "data");
  const server = await startServer(["--durable", "none"], home, COMMAND);
  await speaks(server.port);
  expect(await server.kill("SIGTERM")).toBe(0);
  expect(existsSync(join(home, "minimal-durable.db"))).toBe(false);
});

test("bad options get a clear message and exit code 2", () => {
  const run = (...args: string[]) => {
    const r = Bun.spawnSync([...COMMAND, ...args]);
    return { code: r.exitCode, err: r.stderr.toString() };
  };
  expect(run("-H", "/tmp/x", "--durable", "disk")).toEqual({ code: 2, err: "minimal-durable: --durable must be worker, main or none, not disk\n" });
  expect(run("-H", "/tmp/x", "--sync", "off")).toEqual({ code: 2, err: "minimal-durable: --sync must be full or normal, not off\n" });
  expect(run("-H", "/tmp/x", "--inflight", "0")).toEqual({ code: 2, err: "minimal-durable: --inflight must be a positive integer, not 0\n" });
  expect(run("--durable", "worker")).toEqual({ code: 2, err: "minimal-durable: needs -H DIR for the database\n" });
});
