/**
 * "STORED means it survives": kill -9 right after the last reply, restart on the same data
 * directory, and count exactly what comes back, in order, in every sync mode.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { set, startServer, stopAll, value, type Client } from "./harness";

afterAll(stopAll);

const bodies = (n: number, tag: string) => Array.from({ length: n }, (_, i) => `${tag}-${String(i).padStart(5, "0")}`);

async function drain(c: Client, q: string, expected: string[]): Promise<void> {
  const got = await c.call(`get ${q}\r\n`.repeat(expected.length + 1));
  expect(got).toBe(expected.map((b) => value(q, b) + "END\r\n").join("") + "END\r\n");
}

describe("kill -9", () => {
  for (const mode of [[], ["--sync", "normal"], ["-N"]]) {
    test(`500 pipelined sets survive kill -9 right after the last STORED (${mode.join(" ") || "--sync full"})`, async () => {
      const first = await startServer(mode);
      const c = await first.connect();
      const msgs = bodies(500, "k");
      expect(await c.call(msgs.map((b) => set("dq", b)).join(""))).toBe("STORED\r\n".repeat(500));
      expect(await first.kill("SIGKILL")).not.toBe(0);
      const second = await startServer(mode, first.home);
      const d = await second.connect();
      await drain(d, "dq", msgs);
      expect(await d.call("stats queue\r\n")).toBe("STAT dq 500/500\r\nEND\r\n");
      await second.kill();
    });
  }

  test("with gets interleaved: what was consumed stays consumed, the rest is kept in order", async () => {
    const first = await startServer();
    const c = await first.connect();
    const msgs = bodies(300, "i");
    let pipeline = "";
    let expected = "";
    const consumed: string[] = [];
    msgs.forEach((b, i) => {
      pipeline += set("iq", b);
      expected += "STORED\r\n";
      if (i % 3 === 2) {
        const taken = msgs[consumed.length]!;
        consumed.push(taken);
        pipeline += "get iq\r\n";
        expected += value("iq", taken) + "END\r\n";
      }
    });
    expect(await c.call(pipeline)).toBe(expected);
    await first.kill("SIGKILL");
    const second = await startServer([], first.home);
    const d = await second.connect();
    expect(await d.call("stats queue\r\n")).toBe(`STAT iq 300/${consumed.length}\r\nEND\r\n`);
    await drain(d, "iq", msgs.slice(consumed.length));
    await second.kill();
  });

  test("an open message is back at its place after kill -9", async () => {
    const first = await startServer();
    const c = await first.connect();
    await c.call(["m0", "m1", "m2"].map((b) => set("oq", b)).join(""));
    expect(await c.call("get oq\r\nget oq/open\r\n")).toBe(value("oq", "m0") + "END\r\n" + value("oq/open", "m1") + "END\r\n");
    await first.kill("SIGKILL");
    const second = await startServer([], first.home);
    const d = await second.connect();
    await drain(d, "oq", ["m1", "m2"]);
    await second.kill();
  });
});

describe("clean stop", () => {
  test("SIGTERM exits 0 and a restart keeps every message and counter", async () => {
    const first = await startServer();
    const c = await first.connect();
    const msgs = bodies(200, "t");
    await c.call(msgs.map((b) => set("tq", b)).join("") + "get tq\r\n");
    expect(await first.kill("SIGTERM")).toBe(0);
    const second = await startServer([], first.home);
    const d = await second.connect();
    expect(await d.call("stats queue\r\n")).toBe("STAT tq 200/1\r\nEND\r\n");
    await drain(d, "tq", msgs.slice(1));
    expect(await second.kill("SIGINT")).toBe(0);
  });

  test("a drained queue gives its disk space back", async () => {
    const server = await startServer();
    const c = await server.connect();
    const block = "b".repeat(1024 * 1024 - 16);
    for (let i = 0; i < 4; i++) {
      expect(await c.call(Array.from({ length: 8 }, () => set("big", block)).join(""), 30_000)).toBe("STORED\r\n".repeat(8));
    }
    const full = du(server.home);
    expect(full).toBeGreaterThan(32 * 1024 * 1024);
    for (let i = 0; i < 32; i++) await c.call("get big\r\n", 30_000);
    expect(await c.call("get big\r\n")).toBe("END\r\n");
    // Housekeeping runs on its own schedule; wait for the size, not for a guessed time.
    const deadline = Date.now() + 10_000;
    while (du(server.home) > 10 * 1024 * 1024 && Date.now() < deadline) await Bun.sleep(50);
    expect(du(server.home)).toBeLessThanOrEqual(10 * 1024 * 1024);
    await server.kill();
  });
});

function du(dir: string): number {
  return readdirSync(dir).reduce((n, f) => n + statSync(join(dir, f)).blocks * 512, 0);
}
