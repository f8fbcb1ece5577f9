/**
 * A full disk, for real: data directories on small tmpfs mounts (needs root and mount; where that
 * is not allowed the tests are skipped and say why). Sets fail with SERVER_ERROR out of space,
 * the server stays up, every acknowledged message can still be taken, and the pages consumers
 * free inside the file take new messages at once, without a restart.
 */
import { afterAll, expect, test } from "bun:test";
import { rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { openSqliteStore } from "../../src/store/sqlite";
import { removeDir, startServer, stopAll, tmpfsDir, type Client } from "./harness";

const mounts: string[] = [];
/** A fresh tmpfs of `mb` MB, or null where mounting is not allowed. */
function tmpfs(mb: number): string | null {
  const dir = tmpfsDir("mcq-full-", mb);
  if (dir !== null) mounts.push(dir);
  return dir;
}
const mountPoint = tmpfs(16)!;
const mounted = mountPoint !== null;
if (!mounted) console.warn("full-disk tests skipped: cannot mount a tmpfs (needs root)");

afterAll(async () => {
  await stopAll();
  mounts.forEach(removeDir); // now, not after the run: each holds up to 32 MB of memory
});

/** Takes every byte left on the file system at `dir`, so the disk is really full. */
function fillDisk(dir: string): void {
  try {
    writeFileSync(join(dir, "filler"), Buffer.alloc(64 * 1024 * 1024));
  } catch {
    // ENOSPC once the disk is full: exactly what the filler is for.
  }
}

test.skipIf(!mounted)("a full disk refuses sets, keeps serving gets, and recovers without a restart", async () => {
  const server = await startServer([], join(mountPoint, "data"));
  const c = await server.connect();
  const body = "x".repeat(64 * 1024);
  let stored = 0;
  let reply = "";
  for (let i = 0; i < 1000; i++) {
    reply = await c.call(`set full 0 0 ${body.length}\r\n${body}\r\n`);
    if (reply !== "STORED\r\n") break;
    stored++;
  }
  expect(reply).toBe("SERVER_ERROR out of space\r\n");
  expect(stored).toBeGreaterThan(50);
  // A filler takes what the server gave back, so the disk stays full while we read.
  fillDisk(mountPoint);
  // (A message small enough for the few pages free inside the file could still be stored.)
  expect(await c.call(`set full 0 0 ${body.length}\r\n${body}\r\n`)).toBe("SERVER_ERROR out of space\r\n");
  for (let i = 0; i < stored; i++) {
    expect(await c.call("get full\r\n")).toBe(`VALUE full 0 ${body.length}\r\n${body}\r\nEND\r\n`);
  }
  expect(await c.call("get full\r\n")).toBe("END\r\n");
  rmSync(join(mountPoint, "filler"));
  let after = "";
  for (let i = 0; i < 200 && after !== "STORED\r\n"; i++) {
    after = await c.call("set full 0 0 5\r\nagain\r\n");
    if (after !== "STORED\r\n") await Bun.sleep(50);
  }
  expect(after).toBe("STORED\r\n");
  expect(await c.call("get full\r\n")).toBe("VALUE full 0 5\r\nagain\r\nEND\r\n");
  expect(server.proc.exitCode).toBeNull();
  expect(await server.kill()).toBe(0);
});

/** A 64 KB body that says which message it is. */
const numbered = (i: number) => `${i} `.padEnd(64 * 1024, "x");
const setNumbered = (i: number) => `set q 0 0 ${64 * 1024}\r\n${numbered(i)}\r\n`;

test.skipIf(!mounted)("issue 9.5: on a full 32 MB disk, sets reuse the pages that gets free, at once", async () => {
  const mount = tmpfs(32)!;
  const server = await startServer([], join(mount, "data"));
  const c = await server.connect();
  let next = 0;
  let reply = "";
  while ((reply = await c.call(setNumbered(next))) === "STORED\r\n") next++;
  expect(reply).toBe("SERVER_ERROR out of space\r\n");
  expect(next).toBeGreaterThan(300);
  fillDisk(mount); // nothing left on the file system: only pages inside the file
  const third = Math.ceil(next / 3);
  let first = 0;
  for (; first < third; first++) {
    expect(await c.call("get q\r\n")).toBe(`VALUE q 0 ${64 * 1024}\r\n${numbered(first)}\r\nEND\r\n`);
  }
  // New sets go into the freed pages: the first one at once, and about as many as were taken.
  const stored = next;
  expect(await c.call(setNumbered(next))).toBe("STORED\r\n");
  next++;
  while ((reply = await c.call(setNumbered(next))) === "STORED\r\n") next++;
  expect(reply).toBe("SERVER_ERROR out of space\r\n");
  expect(next - stored).toBeGreaterThanOrEqual(third - 7); // the estimate errs high by about 5%
  for (; first < next; first++) {
    expect(await c.call("get q\r\n")).toBe(`VALUE q 0 ${64 * 1024}\r\n${numbered(first)}\r\nEND\r\n`);
  }
  expect(await c.call("get q\r\n")).toBe("END\r\n");
  expect(await server.kill()).toBe(0);
}, 30_000);

test.skipIf(!mounted)("issue 9.5: a set refused for space changes nothing, and the gets of its batch commit", () => {
  const dir = tmpfs(16)!;
  const body = Buffer.alloc(64 * 1024, 0x61);
  const open = () => openSqliteStore(dir, { sync: "full", cacheMb: 8 });
  let stored = 0;
  let taken = 0;
  let refused = 0;
  let store = open();
  try {
    // A producer that outruns its consumer: every batch takes one message and sets two. Once the
    // disk is full, sets are refused and the batches go on committing their gets.
    for (let i = 0; i < 400; i++) {
      if (store.dequeue("q", 1) !== null) taken++;
      for (let j = 0; j < 2; j++) {
        try {
          store.enqueue("q", 0, body, 0, 1);
          stored++;
        } catch (e) {
          expect((e as Error).message).toBe("out of space");
          expect(store.dirty()).toBe(true); // the get of this batch is still in it
          refused++;
        }
      }
      store.commit(); // never fails: the set that did not fit was refused before it was written
    }
    expect(refused).toBeGreaterThan(100);
    expect(store.detail("q", 1)).toMatchObject({ items: stored - taken, total: stored, fetched: taken });
  } finally {
    store.close(); // else the tmpfs stays busy and cannot be unmounted
  }
  store = open();
  try {
    expect(store.detail("q", 1)).toMatchObject({ items: stored - taken, total: stored, fetched: taken });
  } finally {
    store.close();
  }
});

// The core answers a StoreRefused from enqueue with SERVER_ERROR for that set alone, without
// failing the batch (commands.ts).
test.skipIf(!mounted)("issue 9.5: a set refused for space fails alone: the gets of its turn keep their VALUEs", async () => {
  const mount = tmpfs(16)!;
  const server = await startServer([], join(mount, "data"));
  const c = await server.connect();
  let next = 0;
  while ((await c.call(setNumbered(next))) === "STORED\r\n") next++;
  fillDisk(mount);
  const value = (i: number) => `VALUE q 0 ${64 * 1024}\r\n${numbered(i)}\r\nEND\r\n`;
  // One write, so one turn: the set is refused before the first get's pages are free.
  expect(await c.call(`get q\r\n${setNumbered(next)}get q\r\n`)).toBe(`${value(0)}SERVER_ERROR out of space\r\n${value(1)}`);
  expect(await c.call("get q\r\n")).toBe(value(2));
  expect(await server.kill()).toBe(0);
}, 30_000);

/** `stats queue q` as "items … bytes … total … fetched … open …". */
async function counters(c: Client): Promise<string> {
  const lines = (await c.call("stats queue q\r\n")).split("\r\n").filter((l) => l.startsWith("STAT "));
  return lines.slice(0, 5).map((l) => l.slice(5)).join(" ");
}

// The sequence of stress seed 1058551878 (phase fulldisk), step by step. A message opened a
// second time is written whole again: SQLite rewrites a row whose record changes size (its
// deliveries go from 1 to 2), new pages first, so on a full disk its pages lie past the file's
// end and the checkpoint must grow the file. Before the fix the checkpoint failed, the reserve
// was given back only when a later batch failed, sets then filled the reserve's room, and at the
// next such growth no checkpoint could complete: the WAL never restarted and every batch, gets
// included, failed with "out of space" until a restart.
test.skipIf(!mounted)("issue 9.5: sets never take the reserve's room: what cannot be refused still fits, and gets, aborts and closes keep working", async () => {
  const mount = tmpfs(24)!;
  const server = await startServer([], join(mount, "data"));
  const c = await server.connect();
  const OUT = "SERVER_ERROR out of space\r\n";
  const value = (key: string, i: number) => `VALUE ${key} 0 ${64 * 1024}\r\n${numbered(i)}\r\n`;
  let next = 0;
  let reply = "";
  while ((reply = await c.call(setNumbered(next))) === "STORED\r\n") next++;
  expect(reply).toBe(OUT);
  fillDisk(mount); // nothing left on the file system: only the reserve and pages inside the file
  const queued = Array.from({ length: next }, (_, i) => i);
  let refused = 0;
  for (let cycle = 0; cycle < 60; cycle++) {
    const i = queued.shift()!;
    expect(await c.call("get q/open\r\n")).toBe(`${value("q/open", i)}END\r\n`);
    expect(await c.call("get q/abort\r\n")).toBe("END\r\n");
    expect(await c.call("get q/open\r\n")).toBe(`${value("q/open", i)}END\r\n`); // written again
    expect(await c.call("get q/close\r\n")).toBe("END\r\n");
    // Sets take the pages the close freed, no more: each is stored or refused, nothing else.
    const sets = Array.from({ length: 8 }, (_, k) => setNumbered(next + k));
    const replies = (await c.call(sets.join(""))).match(/[^\r]*\r\n/g)!;
    expect(replies.length).toBe(8);
    for (const r of replies) {
      if (r === "STORED\r\n") queued.push(next);
      else expect(r).toBe(OUT);
      if (r !== "STORED\r\n") refused++;
      next++;
    }
  }
  expect(refused).toBeGreaterThan(0);
  const total = next - refused;
  expect(await counters(c)).toBe(`items ${queued.length} bytes ${queued.length * 64 * 1024} total ${total} fetched 60 open 0`);
  // Every acknowledged message comes back, in order, on the still full disk.
  for (const i of queued) expect(await c.call("get q\r\n")).toBe(`${value("q", i)}END\r\n`);
  expect(await c.call("get q\r\n")).toBe("END\r\n");
  expect(await counters(c)).toBe(`items 0 bytes 0 total ${total} fetched ${total} open 0`);
  // Drained, the disk takes sets again without a restart (housekeeping gives the pages back).
  let after = "";
  for (let i = 0; i < 200 && after !== "STORED\r\n"; i++) {
    after = await c.call(setNumbered(next));
    if (after !== "STORED\r\n") await Bun.sleep(50);
  }
  expect(after).toBe("STORED\r\n");
  expect(await server.kill()).toBe(0);
}, 60_000);
