/**
 * --expiry and housekeeping: the periodic sweep for expired messages must not keep the store
 * busy, or the step that gives disk space back never runs.
 */
import { afterAll, expect, test } from "bun:test";
import { statSync } from "node:fs";
import { join } from "node:path";
import { startServer, stopAll } from "./harness";

afterAll(stopAll);

/** Bytes of the data file and its WAL (the reserve file, mcq.reserve, is left out: it has a fixed size). */
function dataBytes(home: string): number {
  let n = 0;
  for (const f of ["mcq.db", "mcq.db-wal"]) {
    try {
      n += statSync(join(home, f)).size;
    } catch {
      // No WAL right after a truncating checkpoint.
    }
  }
  return n;
}

test("issue 9.6: with --expiry, a drained 32 MB directory shrinks back as it does without the flag", async () => {
  const server = await startServer(["--expiry", "--sync", "normal"]);
  const c = await server.connect();
  const body = "x".repeat(64 * 1024);
  const setMany = Array.from({ length: 16 }, () => `set q 0 3600 ${body.length}\r\n${body}\r\n`).join("");
  for (let i = 0; i < 32; i++) expect(await c.call(setMany)).toBe("STORED\r\n".repeat(16));
  expect(dataBytes(server.home)).toBeGreaterThan(32 * 1024 * 1024);
  const getMany = "get q\r\n".repeat(16);
  const got = `VALUE q 0 ${body.length}\r\n${body}\r\nEND\r\n`.repeat(16);
  for (let i = 0; i < 32; i++) expect(await c.call(getMany)).toBe(got);
  expect(await c.call("get q\r\n")).toBe("END\r\n");
  // Housekeeping (every 200 ms) gives the free pages back in 16 MB steps.
  const deadline = Date.now() + 10_000;
  while (dataBytes(server.home) > 2 * 1024 * 1024 && Date.now() < deadline) await Bun.sleep(100);
  expect(dataBytes(server.home)).toBeLessThan(2 * 1024 * 1024);
  expect(await server.kill()).toBe(0);
}, 30_000);
