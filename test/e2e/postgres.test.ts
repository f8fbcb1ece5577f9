/**
 * Several real mcq processes on one real Postgres (MCQ_TEST_PG, see test/pg.ts): what a client
 * sees across nodes. Each test has a schema of its own.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { dropSchemas, freshSchema, havePostgres, pgStoreUrl } from "../pg";
import { set, startServer, stopAll, tempDir, value, type Client, type Running } from "./harness";

const schemas: string[] = [];

/** `n` nodes on one fresh schema. */
async function nodes(n: number, extra: string[] = []): Promise<Running[]> {
  const schema = freshSchema("e2e");
  schemas.push(schema);
  const all: Running[] = [];
  for (let i = 0; i < n; i++) all.push(await startServer(["--store", pgStoreUrl(schema), ...extra], join(tempDir(), "data")));
  return all;
}

/** Waits until `n` gets are parked on the server (each check is a stats reply, awaited). */
async function parked(server: Running, n: number): Promise<void> {
  const c = await server.connect();
  while (!(await c.call("stats\r\n")).includes(`STAT waiters ${n}\r\n`));
  c.close();
}

/** Every VALUE body in a get reply, in order. */
function bodies(reply: string): string[] {
  const out: string[] = [];
  const re = /VALUE \S+ \d+ (\d+)\r\n/g;
  let m: RegExpExecArray | null;
  while ((m = re.exec(reply)) !== null) {
    out.push(reply.slice(re.lastIndex, re.lastIndex + Number(m[1])));
    re.lastIndex += Number(m[1]) + 2;
  }
  return out;
}

/** Drains `q` through `c` with pipelined gets until a get comes back empty. */
async function drain(c: Client, q: string): Promise<string[]> {
  const got: string[] = [];
  for (;;) {
    const reply = await c.call(`get ${q}\r\n`.repeat(20));
    const b = bodies(reply);
    got.push(...b);
    if (b.length < 20) return got;
  }
}

if (havePostgres("e2e postgres")) {
  afterAll(async () => {
    await stopAll();
    await dropSchemas(schemas);
  });

  describe("mcq nodes on one Postgres", () => {
    test("a plain get hands each message to exactly one consumer across three nodes; one producer's order holds", async () => {
      const servers = await nodes(3);
      const clients = await Promise.all(servers.map((s) => s.connect()));
      // Each node's producer stores 100 messages, in order.
      await Promise.all(
        clients.map((c, i) => c.call(Array.from({ length: 100 }, (_, j) => set("jobs", `n${i}-${String(j).padStart(3, "0")}`)).join(""))),
      );
      const got = await Promise.all(clients.map((c) => drain(c, "jobs")));
      const all = got.flat();
      expect(all.length).toBe(300);
      expect(new Set(all).size).toBe(300);
      // Each consumer sees each producer's messages in the order they were stored.
      for (const mine of got) {
        for (let i = 0; i < 3; i++) {
          const fromI = mine.filter((b) => b.startsWith(`n${i}-`));
          expect(fromI).toEqual([...fromI].sort());
        }
      }
      for (const c of clients) expect(await c.call("stats queue jobs\r\n")).toBe(
        "STAT items 0\r\nSTAT bytes 0\r\nSTAT total 300\r\nSTAT fetched 300\r\nSTAT open 0\r\nSTAT oldest_age_ms 0\r\nSTAT delayed 0\r\nSTAT deduplicated 0\r\nEND\r\n",
      );
    }, 30_000);

    test("one connection's pipeline keeps its order while it runs past gets Postgres has not answered", async () => {
      const [server] = await nodes(1);
      const c = await server!.connect();
      // One write: the plain gets do not stop the connection (get.ts deferGet), so every request
      // below runs in one batch, yet no get returns a message this connection set after it.
      const pipeline = "get q\r\n" + set("q", "a") + "get q\r\nget q\r\n" + set("q", "b") + set("q", "c") +
        "get q/peek\r\nget q\r\n" + set("r", "x") + "get r/open\r\nget r/close\r\nget q\r\nget q\r\n";
      expect(await c.call(pipeline)).toBe(
        "END\r\n" + "STORED\r\n" + value("q", "a") + "END\r\n" + "END\r\n" + "STORED\r\nSTORED\r\n" +
          value("q/peek", "b") + "END\r\n" + value("q", "b") + "END\r\n" + "STORED\r\n" + value("r/open", "x") + "END\r\n" +
          "END\r\n" + value("q", "c") + "END\r\n" + "END\r\n",
      );
      // 200 pipelined set+get pairs: each get takes the message of the set before it.
      const pairs = Array.from({ length: 200 }, (_, i) => set("p", `m${i}`) + "get p\r\n").join("");
      expect(await c.call(pairs)).toBe(Array.from({ length: 200 }, (_, i) => "STORED\r\n" + value("p", `m${i}`) + "END\r\n").join(""));
      expect(await c.call("stats queue p\r\n")).toBe(
        "STAT items 0\r\nSTAT bytes 0\r\nSTAT total 200\r\nSTAT fetched 200\r\nSTAT open 0\r\nSTAT oldest_age_ms 0\r\nSTAT delayed 0\r\nSTAT deduplicated 0\r\nEND\r\n",
      );
    });

    test("a set on node A wakes a blocking get on node B within 100 ms (LISTEN/NOTIFY)", async () => {
      const [a, b] = await nodes(2);
      const producer = await a!.connect();
      const waiter = await b!.connect();
      const delays: number[] = [];
      for (let i = 0; i < 5; i++) {
        waiter.write("get wake/t=5000\r\n");
        await parked(b!, 1);
        const stored = producer.call(set("wake", `m${i}`));
        expect(await stored).toBe("STORED\r\n");
        const at = performance.now();
        const reply = (await waiter.until((buf) => buf.toString().endsWith("END\r\n"))).toString();
        delays.push(performance.now() - at);
        expect(reply).toBe(value("wake/t=5000", `m${i}`) + "END\r\n");
      }
      delays.sort((x, y) => x - y);
      console.log(`wake-up across nodes after STORED, ms: ${delays.map((d) => d.toFixed(1)).join(" ")}`);
      // The median is the claim; a 2-core machine shared with the rest of the suite can stall one.
      expect(delays[2]!).toBeLessThan(100);
      expect(delays[4]!).toBeLessThan(1000);
    }, 30_000);

    test("an open message: the client's disconnect returns it at once, to a get on another node", async () => {
      const [a, b] = await nodes(2);
      const producer = await a!.connect();
      expect(await producer.call(set("rel", "one"))).toBe("STORED\r\n");
      const opener = await a!.connect();
      expect(await opener.call("get rel/open\r\n")).toBe(value("rel/open", "one") + "END\r\n");
      const other = await b!.connect();
      expect(await other.call("get rel\r\n")).toBe("END\r\n"); // held open on node A
      expect(await other.call("stats queue rel\r\n")).toContain("STAT open 1\r\n");
      other.write("get rel/t=5000\r\n");
      await parked(b!, 1);
      opener.close();
      expect((await other.until((buf) => buf.toString().endsWith("END\r\n"))).toString()).toBe(value("rel/t=5000", "one") + "END\r\n");
    }, 30_000);

    test("kill -9 of a node: its open message comes back within --node-timeout, on another node", async () => {
      const [a, b] = await nodes(2, ["--node-timeout", "2"]);
      const producer = await b!.connect();
      expect(await producer.call(set("dead", "held"))).toBe("STORED\r\n");
      const opener = await a!.connect();
      expect(await opener.call("get dead/open\r\n")).toBe(value("dead/open", "held") + "END\r\n");
      const started = performance.now();
      await a!.kill("SIGKILL");
      const other = await b!.connect();
      const reply = await other.call("get dead/t=8000\r\n", 10_000);
      const took = performance.now() - started;
      console.log(`open message of a killed node back after ${took.toFixed(0)} ms (--node-timeout 2)`);
      expect(reply).toBe(value("dead/t=8000", "held") + "END\r\n");
      expect(took).toBeLessThan(2000 + 2000); // the timeout, plus one heartbeat period and a sweep
      expect(await other.call("stats queue dead\r\n")).toBe(
        "STAT items 0\r\nSTAT bytes 0\r\nSTAT total 1\r\nSTAT fetched 1\r\nSTAT open 0\r\nSTAT oldest_age_ms 0\r\nSTAT delayed 0\r\nSTAT deduplicated 0\r\nEND\r\n",
      );
    }, 30_000);

    test("stats are exact across nodes: curr_items, queues and stats queue count every node's work", async () => {
      const [a, b] = await nodes(2);
      const ca = await a!.connect();
      const cb = await b!.connect();
      expect(await ca.call(set("s1", "x") + set("s1", "yy") + set("s2", "z"))).toBe("STORED\r\n".repeat(3));
      expect(await cb.call(set("s1", "w") + "get s1\r\n")).toBe("STORED\r\n" + value("s1", "x") + "END\r\n");
      for (const c of [ca, cb]) {
        const stats = await c.call("stats\r\n");
        expect(stats).toContain("STAT curr_items 3\r\n");
        expect(stats).toContain("STAT queues 2\r\n");
        expect(await c.call("stats queue\r\n")).toBe("STAT s1 3/1\r\nSTAT s2 1/0\r\nEND\r\n");
      }
      expect(await cb.call("delete s2\r\n")).toBe("DELETED\r\n");
      expect(await ca.call("stats queue\r\n")).toBe("STAT s1 3/1\r\nEND\r\n");
      expect(await ca.call("flush s1\r\n")).toBe("OK\r\n");
      expect(await cb.call("stats\r\n")).toContain("STAT curr_items 0\r\n");
    });
  });
}
