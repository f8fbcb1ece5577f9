/**
 * Issue 15's tools: the minimal server (scripts/bench/minimal.ts, the measured ceiling) speaks
 * the subset mcbench uses, byte for byte, and scripts/bench/profile.ts profiles a real server
 * under a real mcbench load and splits its main thread's CPU into parts that add up; handoff.ts
 * times a batch's round trip to a Worker.
 */
import { afterAll, expect, test } from "bun:test";
import { join, resolve } from "node:path";
import { startServer, stopAll } from "./harness";
import { speaksPair } from "./minimal-speaks";

afterAll(stopAll);

const ROOT = resolve(import.meta.dir, "../..");
const MINIMAL = [process.execPath, join(ROOT, "scripts/bench/minimal.ts")];

test("the minimal server appends on set, takes the head on get, and answers the rest with ERROR", async () => {
  const server = await startServer([], undefined, MINIMAL);
  await speaksPair(server.port);
  expect(await server.kill("SIGTERM")).toBe(0);
});

test("profile.ts profiles mcq under mcbench; the parts' shares of the main thread add up to 1", async () => {
  const proc = Bun.spawn([process.execPath, join(ROOT, "scripts/bench/profile.ts"), "-c", "4", "-d", "1", "--strace", "1", "--json"],
    { stdout: "pipe", stderr: "pipe" });
  const [out, err, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  expect({ code, err }).toEqual({ code: 0, err: "" });
  const r = JSON.parse(out);
  expect(r.title).toBe("mcq normal, mcbench pair 4x1, 100 B, 1 s");
  expect(r.rows.map((x: { part: string }) => x.part)).toEqual(["parse (src/protocol)", "command (commands, get, session)",
    "store (src/store, bun:sqlite)", "batch/turn/connection", "socket write", "other JS", "event loop / outside JS", "other threads (not in the share)"]);
  const shares = r.rows.filter((x: { share: number | null }) => x.share !== null).map((x: { share: number }) => x.share);
  expect(Math.abs(shares.reduce((a: number, b: number) => a + b, 0) - 1)).toBeLessThan(1e-9);
  expect(r.samples).toBeGreaterThan(0);
  expect(r.requests).toBeGreaterThan(0);
  // Every request of a pair is one read and one write at 4x1: no pipelining to share them.
  const calls = Object.fromEntries(r.syscalls.map((s: { name: string; perRequest: number }) => [s.name, s.perRequest]));
  expect(calls.sendto).toBeGreaterThan(0.9);
}, 60_000);

test("profile.ts refuses bad options with a clear message and exit code 2", async () => {
  const proc = Bun.spawn([process.execPath, join(ROOT, "scripts/bench/profile.ts"), "--sync", "fast"], { stdout: "pipe", stderr: "pipe" });
  const [err, code] = await Promise.all([new Response(proc.stderr).text(), proc.exited]);
  expect({ code, err }).toEqual({ code: 2, err: "profile: --sync must be normal or full, not fast\n" });
});

test("handoff.ts times a batch's round trip to a Worker, transferred and cloned", async () => {
  const proc = Bun.spawn([process.execPath, join(ROOT, "scripts/bench/handoff.ts"), "--rounds", "200"], { stdout: "pipe", stderr: "pipe" });
  const [out, err, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  expect({ code, err }).toEqual({ code: 0, err: "" });
  const line = (name: string) => new RegExp(`^${name}, 50 requests a batch: [\\d.]+ us a round trip; CPU [\\d.]+ us main thread, [\\d.]+ us process$`);
  const lines = out.trimEnd().split("\n");
  expect(lines.length).toBe(2);
  expect(lines[0]).toMatch(line("transferred ArrayBuffer"));
  expect(lines[1]).toMatch(line("structured clone of objects"));
  const bad = Bun.spawnSync([process.execPath, join(ROOT, "scripts/bench/handoff.ts"), "--rounds", "x"]);
  expect({ code: bad.exitCode, err: bad.stderr.toString() }).toEqual({ code: 2, err: "handoff: --requests and --rounds must be positive numbers\n" });
});
