/**
 * The Postgres store against Postgres servers the test owns (pg-cluster.ts), where the shared one
 * must not be touched: an outage longer than --node-timeout (live nodes must not reap each
 * other), a primary fenced read-only, an old primary back beside the promoted standby. And the
 * longest schema name, on the shared one.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { SQL } from "bun";
import { join } from "node:path";
import { dropSchemas, havePostgres, PG_URL } from "../pg";
import { migrate } from "../../src/store/postgres-schema";
import { createReindexer } from "../../src/store/postgres-reindex";
import { asPostgres, clusterDir, newPrimary, newStandby, until, type Cluster } from "./pg-cluster";
import { runCommand, set, startServer, stopAll, tempDir, value, type Client, type Running } from "./harness";

const storeUrl = (hosts: Cluster[], schema: string) => `postgres://postgres@${hosts.map((h) => h.host).join(",")}/postgres?schema=${schema}`;

/** Sets `q` through `c` until STORED: the node has reconnected (each try is a reply, awaited). */
async function storedAgain(c: Client, q: string, body: string): Promise<void> {
  let reply = "";
  for (let i = 0; i < 20 && !(reply = await c.call(set(q, body), 15_000)).startsWith("STORED"); i++) await Bun.sleep(100);
  expect(reply).toBe("STORED\r\n");
}

if (havePostgres("e2e postgres ha")) {
  const at = clusterDir();
  afterAll(async () => {
    await stopAll();
    await at.removeAll();
  });

  describe("a Postgres outage longer than --node-timeout", () => {
    test("live nodes do not reap each other: both opens stay theirs and confirm; a node killed after is still reaped in time", async () => {
      const pg = await newPrimary(at, "outage");
      const url = storeUrl([pg], "reap");
      const nodes: Running[] = [];
      for (let i = 0; i < 2; i++) nodes.push(await startServer(["--store", url, "--node-timeout", "3"], join(tempDir(), "data")));
      const [A, B] = nodes as [Running, Running];
      const [a, b, other] = [await A.connect(), await B.connect(), await A.connect()];
      expect(await a.call(set("q", "m1") + set("q", "m2"))).toBe("STORED\r\n".repeat(2));
      expect(await a.call("get q/open\r\n")).toBe(value("q/open", "m1") + "END\r\n");
      expect(await b.call("get q/open\r\n")).toBe(value("q/open", "m2") + "END\r\n");

      await pg.stop("fast");
      await Bun.sleep(6000); // twice --node-timeout: every node's heartbeat is stale
      await pg.start();
      await storedAgain(other, "alive", "a");
      await storedAgain(await B.connect(), "alive", "b");
      // A reaper would have acted by now: it beats every second (--node-timeout / 3).
      await Bun.sleep(4500);
      expect(await other.call("get q\r\n")).toBe("END\r\n");
      expect(await b.call("get q/close\r\n")).toBe("END\r\n");
      expect(await a.call("get q/close\r\n")).toBe("END\r\n");
      for (const n of nodes) expect(n.stderr()).not.toMatch(/reaped|open messages of dead nodes returned/);

      // A node that really dies is still reaped: B, killed holding an open message.
      expect(await b.call(set("q", "m3") + "get q/open\r\n")).toBe("STORED\r\n" + value("q/open", "m3") + "END\r\n");
      const killed = performance.now();
      await B.kill("SIGKILL");
      expect(await other.call("get q/t=10000\r\n", 15_000)).toBe(value("q/t=10000", "m3") + "END\r\n");
      const took = performance.now() - killed;
      console.log(`after the outage, the open message of a killed node came back after ${took.toFixed(0)} ms (--node-timeout 3)`);
      expect(took).toBeLessThan(3000 + 2000); // the timeout, plus a heartbeat period and the reap
      expect(A.stderr()).toMatch(/INFO Postgres: 1 open messages of dead nodes returned to their queues/);
    }, 90_000);
  });
  describe("a primary fenced read-only (default_transaction_read_only = on)", () => {
    const fence = async (pg: Cluster, on: boolean) => {
      await pg.psql(on ? "ALTER SYSTEM SET default_transaction_read_only = on" : "ALTER SYSTEM RESET default_transaction_read_only");
      await pg.psql("SELECT pg_reload_conf()");
    };

    test("a node whose first host is fenced writes to the next one", async () => {
      const [fenced, other] = [await newPrimary(at, "fenced"), await newPrimary(at, "other")];
      await fence(fenced, true);
      const server = await startServer(["--store", storeUrl([fenced, other], "ro")], join(tempDir(), "data"));
      const c = await server.connect();
      expect(await c.call(set("q", "m1"))).toBe("STORED\r\n");
      expect(await other.psql("SELECT convert_from(body, 'UTF8') FROM ro.mcq_messages")).toBe("m1");
      expect(server.stderr()).not.toMatch(/ERROR/);
      expect(await c.call("stats\r\n")).toContain("STAT curr_items 1\r\n");
      expect(await server.kill("SIGTERM")).toBe(0);
      await fence(fenced, false);
    }, 60_000);

    test("the index upkeep leaves a fenced primary alone, and rebuilds once the fence is lifted", async () => {
      const pg = await newPrimary(at, "fencedidx");
      const url = `postgres://postgres@${pg.host}/postgres`;
      const sql = new SQL(url, { max: 1 });
      await migrate(sql, "idx");
      await sql.unsafe(`INSERT INTO idx.mcq_messages (queue, flags, created, expires, body) SELECT $1, 0, 0, 0, '\\x00' FROM generate_series(1, 30000)`, ["x".repeat(200)]);
      await sql.unsafe("DELETE FROM idx.mcq_messages");
      await sql.unsafe("VACUUM idx.mcq_messages");
      const head = async () => Number((await sql.unsafe("SELECT pg_relation_size('idx.mcq_messages_head') AS b"))[0].b);
      const bloated = await head();
      expect(bloated).toBeGreaterThan(2 * 1024 * 1024);
      await sql.close();
      await fence(pg, true);
      const lines: string[] = [];
      const reindexer = createReindexer({
        schema: "idx", intervalS: 0, floorBytes: 1024 * 1024, log: (level, m) => lines.push(`${level} ${m}`),
        connect: () => new SQL(url, { max: 1 }),
      });
      // The first check only reads the write counters; the second would rebuild.
      for (let i = 0; i < 2; i++) expect(await reindexer.check()).toEqual({ skipped: "read-only", dropped: [], rebuilt: [], failed: [] });
      expect(lines).toEqual([]);
      await fence(pg, false);
      await reindexer.check();
      const after = await reindexer.check();
      expect(after.rebuilt.map((r) => r.index)).toEqual(["mcq_messages_head"]); // the pkey is under the 1 MiB floor
      const again = new SQL(url, { max: 1 });
      expect(Number((await again.unsafe("SELECT pg_relation_size('idx.mcq_messages_head') AS b"))[0].b)).toBeLessThan(bloated / 10);
      await again.close();
    }, 60_000);
  });
  describe("split brain: the old primary back, unfenced, beside the promoted standby", () => {
    test("a node picks the newest timeline and says so; one never goes back to an older timeline", async () => {
      const a = await newPrimary(at, "old");
      const b = await newStandby(at, a, "new");
      const url = storeUrl([a, b], "split");
      const first = await startServer(["--store", url], join(tempDir(), "data"));
      const c1 = await first.connect();
      expect(await c1.call(set("q", "m1"))).toBe("STORED\r\n");
      await until("m1 on the standby", async () => (await b.psql("SELECT count(*) FROM split.mcq_messages")) === "1");
      await a.stop("immediate");
      await asPostgres("pg_ctl", "-D", b.data, "-w", "promote");
      await storedAgain(c1, "q", "m2"); // on B now
      await a.start(); // back as a primary, on the old timeline: nothing fenced it

      const second = await startServer(["--store", url], join(tempDir(), "data"));
      const c2 = await second.connect();
      expect(await c2.call(set("q", "m3"))).toBe("STORED\r\n");
      expect(await c2.call("get q\r\nget q\r\nget q\r\nget q\r\n")).toBe(
        value("q", "m1") + "END\r\n" + value("q", "m2") + "END\r\n" + value("q", "m3") + "END\r\nEND\r\n",
      );
      expect(second.stderr()).toMatch(
        new RegExp(`ERROR Postgres: split brain: ${b.host} \\(timeline 2\\) and ${a.host} \\(timeline 1\\) both take writes; writing to ${b.host}, the newest timeline; ` +
          `${a.host} must be fenced or rewound \\(pg_rewind\\) before it rejoins`),
      );
      // B goes away: the first node, which wrote to timeline 2, does not fall back to A's timeline 1.
      await b.stop("fast");
      // The first request fails on the connection B dropped; the next ones walk the hosts again.
      let reply = "";
      for (let i = 0; i < 5 && !(reply = await c1.call(set("q", "m4"), 15_000)).includes("no writable host"); i++) expect(reply).toStartWith("SERVER_ERROR ");
      expect(reply).toStartWith("SERVER_ERROR Postgres: no writable host (");
      expect(reply).toContain(`${a.host}: timeline 1, older than timeline 2 this node wrote to`);
      expect(await a.psql("SELECT count(*) FROM split.mcq_messages")).toBe("1"); // m1 only: nothing went there
      await b.start();
      await storedAgain(c1, "q", "m5");
      expect(await c1.call("get q\r\nget q\r\n")).toBe(value("q", "m5") + "END\r\nEND\r\n");
    }, 90_000);
  });
  describe("the schema name's length", () => {
    test("60 characters: refused at start (exit 2, saying why); 59: sets stored, a get on another connection woken", async () => {
      const long = `mcq_ha_${process.pid}_`.padEnd(60, "x");
      const r = await runCommand(["-p", "0", "-H", join(tempDir(), "data"), "--store", `postgres://u:secret@127.0.0.1:1/db?schema=${long}`]);
      expect(r.code).toBe(2);
      expect(r.stderr).toBe(`mcq: option '--store <url>' argument 'postgres://u:secret@127.0.0.1:1/db?schema=${long}' is invalid. ` +
        `schema '${long}' is 60 characters; at most 59 (mcq_<schema> names its NOTIFY channel, at most 63 bytes) (see mcq --help)\n`);

      const schema = long.slice(0, 59);
      const url = `${PG_URL}${PG_URL!.includes("?") ? "&" : "?"}schema=${schema}`;
      const [A, B] = [await startServer(["--store", url], join(tempDir(), "data")), await startServer(["--store", url], join(tempDir(), "data"))];
      try {
        // A get waiting on node A is woken by a set on node B: through the channel mcq_<schema>.
        const [waiter, watcher, producer] = [await A.connect(), await A.connect(), await B.connect()];
        waiter.write("get q/t=5000\r\n");
        while (!(await watcher.call("stats\r\n")).includes("STAT waiters 1\r\n"));
        const at = performance.now();
        expect(await producer.call(set("q", "m1"))).toBe("STORED\r\n");
        expect((await waiter.until((b) => b.toString().endsWith("END\r\n"))).toString()).toBe(value("q/t=5000", "m1") + "END\r\n");
        expect(performance.now() - at).toBeLessThan(2000); // woken, not served by a timer
        for (const n of [A, B]) expect(n.stderr()).not.toMatch(/WARN|ERROR/);
      } finally {
        await A.kill("SIGTERM");
        await B.kill("SIGTERM");
        await dropSchemas([schema]);
      }
    }, 30_000);
  });
  describe("the log during an outage", () => {
    test("the first failed batch is an ERROR line; the rest are one count once a batch commits again", async () => {
      const pg = await newPrimary(at, "logs");
      const server = await startServer(["--store", storeUrl([pg], "logs")], join(tempDir(), "data"));
      const c = await server.connect();
      expect(await c.call(set("q", "m1"))).toBe("STORED\r\n");
      await pg.stop("fast");
      let failures = 0;
      for (const until = performance.now() + 2000; performance.now() < until; failures++) expect(await c.call(set("q", "x"), 15_000)).toStartWith("SERVER_ERROR ");
      expect(failures).toBeGreaterThan(5);
      await pg.start();
      await storedAgain(c, "q", "m2");
      const summary = /ERROR store failures: (\d+) more batches undone in the [\d.]+ s after the first \(the last: Postgres: [^)]+\)/;
      for (const deadline = Date.now() + 15_000; !summary.test(server.stderr()) && Date.now() < deadline; ) await Bun.sleep(100); // said at the first commit after the outage
      const errors = Number(/STAT store_errors (\d+)\r\n/.exec(await c.call("stats\r\n"))![1]);
      expect(errors).toBeGreaterThanOrEqual(failures);
      expect(server.stderr().match(/ERROR store failure, batch undone: /g)).toEqual(["ERROR store failure, batch undone: "]);
      expect(Number(summary.exec(server.stderr())?.[1])).toBe(errors - 1);
    }, 60_000);
  });
}
