/**
 * The compiled binary, end to end. dist/mcq is built first if it is missing (it takes about
 * a second); .ci/run also runs the whole e2e suite against it with MCQ_BIN=dist/mcq.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { resolve } from "node:path";
import pkg from "../../package.json";
import { runCommand, set, startServer, stopAll, value } from "./harness";

const ROOT = resolve(import.meta.dir, "../..");
const BIN = resolve(ROOT, "dist/mcq");

beforeAll(async () => {
  if (existsSync(BIN)) return;
  const build = Bun.spawn([process.execPath, "scripts/build.ts"], { cwd: ROOT, stdout: "ignore", stderr: "inherit" });
  expect(await build.exited).toBe(0);
});
afterAll(stopAll);

describe("dist/mcq", () => {
  test("prints its embedded version", async () => {
    const r = await runCommand(["--version"], 20_000, [BIN]);
    expect([r.code, r.stderr]).toEqual([0, ""]);
    expect(r.stdout).toStartWith(`mcq ${pkg.version} (bun ${Bun.version}, sqlite 3.`);
  });

  test("serves, survives kill -9, and stops on SIGTERM with exit 0", async () => {
    const first = await startServer([], undefined, [BIN]);
    const c = await first.connect();
    const bodies = Array.from({ length: 100 }, (_, i) => `b${i}`);
    expect(await c.call(bodies.map((b) => set("bin", b)).join(""))).toBe("STORED\r\n".repeat(100));
    await first.kill("SIGKILL");
    const second = await startServer([], first.home, [BIN]);
    const d = await second.connect();
    expect(await d.call("get bin\r\n".repeat(101))).toBe(bodies.map((b) => value("bin", b) + "END\r\n").join("") + "END\r\n");
    expect(await second.kill("SIGTERM")).toBe(0);
  });
});
