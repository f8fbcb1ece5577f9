/**
 * A full disk, for real: the data directory on a 16 MB tmpfs (needs root and mount; where that
 * is not allowed the test is skipped and says why). Sets fail with SERVER_ERROR out of space,
 * the server stays up, every acknowledged message can still be taken, and once space is back
 * sets succeed again without a restart.
 */
import { afterAll, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startServer, stopAll } from "./harness";

const mountPoint = mkdtempSync(join(tmpdir(), "mcq-full-"));
const mounted = Bun.spawnSync(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", mountPoint]).exitCode === 0;
if (!mounted) console.warn(`full-disk test skipped: cannot mount a tmpfs at ${mountPoint} (needs root)`);

afterAll(async () => {
  await stopAll();
  if (mounted) Bun.spawnSync(["umount", mountPoint]);
  rmSync(mountPoint, { recursive: true, force: true });
});

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
  try {
    writeFileSync(join(mountPoint, "filler"), Buffer.alloc(16 * 1024 * 1024));
  } catch {
    // ENOSPC once the disk is full: exactly what the filler is for.
  }
  expect(await c.call(`set full 0 0 1\r\nx\r\n`)).toBe("SERVER_ERROR out of space\r\n");
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
