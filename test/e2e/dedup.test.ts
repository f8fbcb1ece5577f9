/**
 * Issue 12 (DECISIONS #10): idempotent sets (`set q/id=<token>`) over TCP against the real
 * server: a producer's retry stores nothing within the dedup window, tokens survive kill -9, and
 * the window ends (crossed with the injected clock, MCQ_CLOCK_OFFSET_MS, not by waiting).
 */
import { afterAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { runCommand, set, startServer, stopAll, tempDir, value, type Client } from "./harness";
import { dropStoreSchemas, startOn, STORES } from "./stores";

afterAll(async () => {
  await stopAll();
  await dropStoreSchemas();
});

async function field(c: Client, q: string, name: string): Promise<number> {
  const reply = await c.call(`stats queue ${q}\r\n`);
  return Number(new RegExp(`STAT ${name} (\\d+)\\r\\n`).exec(reply)?.[1] ?? -1);
}

describe.each(STORES)("set q/id=<token> on %s", (store) => {
  test("a retry with the same token answers STORED and stores nothing; other tokens and queues are apart", async () => {
    const server = await startOn(store);
    const c = await server.connect();
    const retry = "set j/id=order-17 0 0 5\r\nfirst\r\n";
    // Twice in one packet (one batch), then again later.
    expect(await c.call(retry + "set j/id=order-17 0 0 6\r\nsecond\r\n")).toBe("STORED\r\nSTORED\r\n");
    expect(await c.call(retry)).toBe("STORED\r\n");
    expect(await c.call("set j/id=order-18 0 0 5\r\nother\r\nset k/id=order-17 0 0 5\r\nqueue\r\n")).toBe("STORED\r\nSTORED\r\n");
    expect(await field(c, "j", "items")).toBe(2);
    expect(await field(c, "j", "deduplicated")).toBe(2);
    expect(await field(c, "k", "deduplicated")).toBe(0);
    expect(await c.call("get j\r\nget j\r\nget j\r\n")).toBe(value("j", "first") + "END\r\n" + value("j", "other") + "END\r\nEND\r\n");
    // Taken, the token still turns the retry away: the message was delivered once.
    expect(await c.call(retry + "get j\r\n")).toBe("STORED\r\nEND\r\n");
    // With a delay, and with noreply (no reply either way).
    expect(await c.call("set d/delay=60000/id=x 0 0 1\r\na\r\nset d/id=x 0 0 1\r\nb\r\nset d/id=x 0 0 1 noreply\r\nc\r\n" + "stats queue d\r\n"))
      .toMatch(/^STORED\r\nSTORED\r\nSTAT items 1\r\n[^]*STAT delayed 1\r\nSTAT deduplicated 2\r\nEND\r\n$/);
    expect(await c.call(`set j/id=${"t".repeat(129)} 0 0 1\r\nx\r\n`)).toBe("CLIENT_ERROR bad command line format\r\n");
    await server.kill();
  });

  test("plain sets still work beside idempotent ones", async () => {
    const server = await startOn(store);
    const c = await server.connect();
    expect(await c.call(set("plain", "a") + set("plain", "a"))).toBe("STORED\r\nSTORED\r\n");
    expect(await field(c, "plain", "items")).toBe(2);
    // A later plain set, even to a queue named like a fanout child of the token's queue, depends on no
    // token: in another batch, and in the same one.
    expect(await c.call("set tq/id=T1 0 0 1\r\na\r\n")).toBe("STORED\r\n");
    expect(await c.call(set("tq+x", "b"))).toBe("STORED\r\n");
    expect(await c.call("set tq/id=T2 0 0 1\r\nc\r\n" + set("tq+y", "d"))).toBe("STORED\r\nSTORED\r\n");
    expect(await c.call("get tq+x\r\nget tq+y\r\n")).toBe(value("tq+x", "b") + "END\r\n" + value("tq+y", "d") + "END\r\n");
    expect(await field(c, "tq+x", "total")).toBe(1);
    await server.kill();
  });
});

describe("set q/id=<token>", () => {

  test("kill -9: tokens survive inside the window; once it has ended the token stores again", async () => {
    const home = join(tempDir(), "data");
    let server = await startServer(["--dedup-window", "60"], home);
    let c = await server.connect();
    expect(await c.call("set p/id=t1 0 0 2\r\nm1\r\n")).toBe("STORED\r\n");
    expect(await server.kill("SIGKILL")).not.toBe(0);

    server = await startServer(["--dedup-window", "60"], home);
    c = await server.connect();
    expect(await c.call("set p/id=t1 0 0 5\r\nretry\r\n")).toBe("STORED\r\n");
    expect(await field(c, "p", "items")).toBe(1);
    expect(await server.kill("SIGKILL")).not.toBe(0);

    server = await startServer(["--dedup-window", "60"], home, undefined, { MCQ_CLOCK_OFFSET_MS: "61000" });
    c = await server.connect();
    expect(await c.call("set p/id=t1 0 0 5\r\nlater\r\n" + "get p\r\nget p\r\n")).toBe(
      "STORED\r\n" + value("p", "m1") + "END\r\n" + value("p", "later") + "END\r\n",
    );
    await server.kill();
  });

  test("--dedup-window takes 1 to 86400 seconds", async () => {
    for (const bad of ["0", "86401", "5m"]) {
      const r = await runCommand(["--dedup-window", bad, "-p", "0", "-H", join(tempDir(), "data")]);
      expect([r.code, r.stderr.trim().split("\n").length, r.stderr.includes("--dedup-window")]).toEqual([2, 1, true]);
    }
  });
});
