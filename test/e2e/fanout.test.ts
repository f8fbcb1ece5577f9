/**
 * Issue 12 (DECISIONS #10): fanout, opt-in. A set to <q> also stores a copy in every child
 * <q>+<child> that exists (named by a set or a get), in one commit; each child keeps its own
 * FIFO and limits; without --fanout, `+` is an ordinary name byte.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { set, startServer, stopAll, tempDir, value, type Client } from "./harness";
import { dropStoreSchemas, startOn, STORES } from "./stores";

afterAll(async () => {
  await stopAll();
  await dropStoreSchemas();
});

const stat = async (c: Client, q: string) => c.call(`stats queue ${q}\r\n`);

describe.each(STORES)("fanout on %s", (store) => {
  test("a full child with discard_old drops its oldest for a copy, and nothing for a set its token turns away", async () => {
    const file = join(tempDir(), "mcq.toml");
    await Bun.write(file, '[queues."f+*"]\nmax_items = 1\ndiscard_old = true\n');
    const server = await startOn(store, ["--fanout", "--config", file]);
    const c = await server.connect();
    expect(await c.call(set("f+c", "old") + "set f/id=t 0 0 1\r\nn\r\n")).toBe("STORED\r\nSTORED\r\n");
    expect(await c.call("set f/id=t 0 0 1\r\nr\r\n")).toBe("STORED\r\n");
    expect(await stat(c, "f+c")).toContain("STAT items 1\r\nSTAT bytes 1\r\nSTAT total 2\r\nSTAT fetched 1\r\n");
    expect(await stat(c, "f+c")).toContain("STAT discarded 1\r\n");
    expect(await c.call("get f+c\r\nget f+c\r\n")).toBe(value("f+c", "n") + "END\r\nEND\r\n");
    await server.kill();
  });

  test("--fanout: a set reaches the parent and every existing child, each with its own FIFO", async () => {
    const home = join(tempDir(), "data");
    let server = await startOn(store, ["--fanout"], home);
    let c = await server.connect();
    // The children come to exist: one by a get, one by a set.
    expect(await c.call("get feed+a\r\n" + set("feed+b", "own"))).toBe("END\r\nSTORED\r\n");
    expect(await c.call(set("feed", "one") + set("feed", "two"))).toBe("STORED\r\nSTORED\r\n");
    expect(await c.call("get feed\r\nget feed+a\r\nget feed+b\r\nget feed+b\r\n")).toBe(
      value("feed", "one") + "END\r\n" + value("feed+a", "one") + "END\r\n" + value("feed+b", "own") + "END\r\n" + value("feed+b", "one") + "END\r\n",
    );
    // A copy is not a parent: a set to a child reaches only it. Delays reach the copies too.
    expect(await c.call(set("feed+a", "only a") + "set feed/delay=60000 0 0 1\r\nd\r\n")).toBe("STORED\r\nSTORED\r\n");
    expect(await stat(c, "feed+b")).toContain("STAT delayed 1\r\n");
    // kill -9 after the STORED: every copy is there (one commit).
    await c.call(set("feed", "three"));
    expect(await server.kill("SIGKILL")).not.toBe(0);
    server = await startOn(store, ["--fanout"], home);
    c = await server.connect();
    expect(await c.call("get feed\r\nget feed+a\r\nget feed+a\r\nget feed+a\r\nget feed+b\r\nget feed+b\r\n")).toBe(
      value("feed", "two") + "END\r\n" + value("feed+a", "two") + "END\r\n" + value("feed+a", "only a") + "END\r\n" +
        value("feed+a", "three") + "END\r\n" + value("feed+b", "two") + "END\r\n" + value("feed+b", "three") + "END\r\n",
    );
    // Deleted, a child no longer receives copies.
    expect(await c.call("delete feed+a\r\n" + set("feed", "four") + "stats queue\r\n")).toMatch(/^DELETED\r\nSTORED\r\nSTAT feed \d+\/\d+\r\nSTAT feed\+b /);
    await server.kill();
  });

  test("a full child counts the copy it refused; the parent's set stands", async () => {
    const file = join(tempDir(), "mcq.toml");
    await Bun.write(file, '[queues."news"]\nfanout = true\n[queues."news+*"]\nmax_items = 1\n');
    const server = await startOn(store, ["--config", file]);
    const c = await server.connect();
    await c.call("get news+x\r\n");
    expect(await c.call(set("news", "1") + set("news", "2"))).toBe("STORED\r\nSTORED\r\n");
    expect(await stat(c, "news+x")).toMatch(/STAT items 1\r\n[^]*STAT fanout_refused 1\r\n/);
    expect(await stat(c, "news")).toMatch(/STAT items 2\r\n/);
    await server.kill();
  });

  test("a set with a token reaches the children once: its retry stores no copy either", async () => {
    const server = await startOn(store, ["--fanout"]);
    const c = await server.connect();
    await c.call("get t+a\r\n");
    const once = "set t/id=k1 0 0 1\r\nx\r\n";
    expect(await c.call(once + once)).toBe("STORED\r\nSTORED\r\n");
    expect(await c.call(once + set("t+a", "own"))).toBe("STORED\r\nSTORED\r\n");
    expect(await c.call("get t+a\r\nget t+a\r\nget t+a\r\nget t\r\nget t\r\n")).toBe(
      value("t+a", "x") + "END\r\n" + value("t+a", "own") + "END\r\nEND\r\n" + value("t", "x") + "END\r\nEND\r\n",
    );
    await server.kill();
  });
});

describe("fanout", () => {
  test("without fanout, + is an ordinary name byte", async () => {
    const server = await startServer();
    const c = await server.connect();
    await c.call(set("a+b", "child?") + set("a", "parent"));
    expect(await c.call("get a+b\r\nget a+b\r\n")).toBe(value("a+b", "child?") + "END\r\nEND\r\n");
    await server.kill();
  });
});
