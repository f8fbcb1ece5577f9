/**
 * When a node walks its host list again (postgres-hosts.ts), on Postgres servers the test owns
 * (pg-cluster.ts): a connection that closed while the node was idle, a change of what the role may
 * read, and a standby promoted while the old primary keeps running (review 10a M2, M3, M4).
 */
import { afterAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { havePostgres } from "../pg";
import { asPostgres, clusterDir, newPrimary, newStandby, until, type Cluster } from "./pg-cluster";
import { set, startServer, stopAll, tempDir, value, type Client } from "./harness";

const storeUrl = (hosts: Cluster[], schema: string, user = "postgres") => `postgres://${user}@${hosts.map((h) => h.host).join(",")}/postgres?schema=${schema}`;
const bodies = (c: Cluster, schema: string) => c.psql(`SELECT coalesce(string_agg(convert_from(body, 'UTF8'), ',' ORDER BY id), '-') FROM ${schema}.mcq_messages`);
const splitBrain = (to: Cluster, old: Cluster) =>
  `ERROR Postgres: split brain: ${to.host} (timeline 2) and ${old.host} (timeline 1) both take writes; writing to ${to.host}, the newest timeline; ` +
  `${old.host} must be fenced or rewound (pg_rewind) before it rejoins`;

/** Sets `q` through `c` until STORED (each try a reply, awaited): the node has walked again. */
async function storedAgain(c: Client, q: string, body: string): Promise<string> {
  let reply = "";
  for (let i = 0; i < 20 && !(reply = await c.call(set(q, body), 15_000)).startsWith("STORED"); i++) await Bun.sleep(100);
  return reply;
}

/** Ends every connection of `user` on `pg`: the node's connection closes, and it walks again. */
const endConnections = (pg: Cluster, user: string) => pg.psql(`SELECT count(pg_terminate_backend(pid)) > 0 FROM pg_stat_activity WHERE usename = '${user}'`);

if (havePostgres("e2e postgres walk")) {
  const at = clusterDir();
  afterAll(async () => {
    await stopAll();
    await at.removeAll();
  });

  describe("an idle node whose connection closed", () => {
    test("the old primary restarted unfenced within a heartbeat period, the standby promoted: the next sets go to the promoted one", async () => {
      const a = await newPrimary(at, "bounce-a");
      const b = await newStandby(at, a, "bounce-b");
      // Heartbeats every 20 s: nothing but the close itself can make the node walk in this test.
      const node = await startServer(["--store", storeUrl([a, b], "bounce"), "--node-timeout", "60"], join(tempDir(), "data"));
      const c = await node.connect();
      expect(await c.call(set("q", "m1"))).toBe("STORED\r\n");
      await until("m1 on the standby", async () => (await b.psql("SELECT count(*) FROM bounce.mcq_messages")) === "1");
      // The bounce falls between two of the node's reads of the counters (every second), as a fast
      // restart may: the node, paused meanwhile, sees only its idle connection closed.
      node.proc.kill("SIGSTOP");
      await a.stop("immediate");
      await asPostgres("pg_ctl", "-D", b.data, "-w", "promote");
      await a.start(); // a primary again, on timeline 1: nothing fenced it
      node.proc.kill("SIGCONT");
      // Bun.SQL would connect to A again by itself; the close makes the node walk instead.
      await until("the walk", async () => node.stderr().includes("now using"));
      expect(node.stderr()).toContain(splitBrain(b, a));
      expect(node.stderr()).toContain(`WARN Postgres: now using ${b.host} (was ${a.host})\n`);
      expect(await c.call(set("q", "m2") + set("q", "m3"), 15_000)).toBe("STORED\r\n".repeat(2));
      expect(await bodies(b, "bounce")).toBe("m1,m2,m3");
      expect(await bodies(a, "bounce")).toBe("m1");
      expect(await c.call("get q\r\nget q\r\nget q\r\nget q\r\n")).toBe(value("q", "m1") + "END\r\n" + value("q", "m2") + "END\r\n" + value("q", "m3") + "END\r\nEND\r\n");
      await node.kill("SIGKILL");
    }, 90_000);
  });

  describe("a node whose connection works", () => {
    test("a standby promoted while the old primary keeps running, unfenced: the node says so and moves to the promoted one (review 10a M4)", async () => {
      const a = await newPrimary(at, "keep-a");
      const b = await newStandby(at, a, "keep-b");
      // --node-timeout 3: a heartbeat period, and so the hosts asked again, every second.
      const node = await startServer(["--store", storeUrl([a, b], "keep"), "--node-timeout", "3"], join(tempDir(), "data"));
      const c = await node.connect();
      expect(await c.call(set("q", "m1"))).toBe("STORED\r\n");
      await until("m1 on the standby", async () => (await b.psql("SELECT count(*) FROM keep.mcq_messages")) === "1");
      await asPostgres("pg_ctl", "-D", b.data, "-w", "promote"); // A still takes writes
      const moving = `ERROR Postgres: ${b.host} takes writes on timeline 2, newer than timeline 1 of ${a.host}, which this node writes to: ` +
        "a standby was promoted while the old primary still takes writes; moving to the newest timeline\n";
      await until("the watch's ERROR and the walk", async () => node.stderr().includes(moving) && node.stderr().includes("now using"));
      expect(node.stderr()).toContain(splitBrain(b, a));
      expect(node.stderr()).toContain(`WARN Postgres: now using ${b.host} (was ${a.host})\n`);
      expect(await c.call(set("q", "m2") + set("q", "m3"))).toBe("STORED\r\n".repeat(2));
      expect(await bodies(b, "keep")).toBe("m1,m2,m3");
      expect(await bodies(a, "keep")).toBe("m1");
      await Bun.sleep(2500); // two more periods of asking (nothing to await): nothing newer now, nothing said
      expect(node.stderr().split(moving).length).toBe(2);
      expect(await c.call("get q\r\nget q\r\nget q\r\nget q\r\n")).toBe(value("q", "m1") + "END\r\n" + value("q", "m2") + "END\r\n" + value("q", "m3") + "END\r\nEND\r\n");
      expect(await node.kill("SIGTERM")).toBe(0);
    }, 90_000);
  });

  describe("the server's system identifier", () => {
    test("a GRANT, then a REVOKE, of pg_control_system(): the node's only server stays its own (review 10a M2)", async () => {
      const pg = await newPrimary(at, "grant");
      await pg.psql("CREATE ROLE mcqr LOGIN; GRANT CREATE ON DATABASE postgres TO mcqr; REVOKE EXECUTE ON FUNCTION pg_control_system() FROM PUBLIC");
      const node = await startServer(["--store", storeUrl([pg], "privs", "mcqr")], join(tempDir(), "data"));
      const c = await node.connect();
      expect(await c.call(set("q", "m1"))).toBe("STORED\r\n");
      expect(node.stderr()).toContain("WARN Postgres: the server's identity cannot be read");
      await pg.psql("GRANT EXECUTE ON FUNCTION pg_control_system() TO mcqr");
      expect(await endConnections(pg, "mcqr")).toBe("t");
      expect(await storedAgain(c, "q", "m2")).toBe("STORED\r\n");
      await pg.psql("REVOKE EXECUTE ON FUNCTION pg_control_system() FROM mcqr");
      expect(await endConnections(pg, "mcqr")).toBe("t");
      expect(await storedAgain(c, "q", "m3")).toBe("STORED\r\n");
      expect(await bodies(pg, "privs")).toBe("m1,m2,m3");
      expect(node.stderr()).not.toContain("another cluster");
      await node.kill("SIGKILL");
    }, 60_000);

    test("a new cluster behind the same address: refused, saying why and that a restart accepts it; the restarted node uses it", async () => {
      const old = await newPrimary(at, "replaced");
      const next = await newPrimary(at, "replacement");
      const system = (c: Cluster) => c.psql("SELECT system_identifier FROM pg_control_system()");
      const [was, now] = [await system(old), await system(next)];
      const url = storeUrl([old], "replaced");
      const node = await startServer(["--store", url], join(tempDir(), "data"));
      const c = await node.connect();
      expect(await c.call(set("q", "m1"))).toBe("STORED\r\n");
      // The replacement takes the old one's address (pg_upgrade, a blue/green switch).
      await old.stop("fast");
      await next.stop("fast");
      await asPostgres("pg_ctl", "-D", next.data, "-l", join(at.dir, "replacement.log"), "-w", "-o", `-p ${old.port} -k ${at.dir} -c listen_addresses=127.0.0.1`, "start");
      try {
        const refused = `SERVER_ERROR Postgres: no writable host (${old.host}: another cluster (system identifier ${now}, not ${was} this node wrote to): ` +
          "if it replaced that one, restart mcq to accept it)\r\n";
        let reply = "";
        for (let i = 0; i < 20 && (reply = await c.call(set("q", "m2"), 15_000)) !== refused; i++) expect(reply).toStartWith("SERVER_ERROR ");
        expect(reply).toBe(refused);
        expect(await node.kill("SIGTERM")).toBe(1); // it could not leave: its row is on the old cluster
        const again = await startServer(["--store", url], join(tempDir(), "data"));
        expect(await (await again.connect()).call(set("q", "m3"))).toBe("STORED\r\n");
        expect(await old.psql("SELECT convert_from(body, 'UTF8') FROM replaced.mcq_messages")).toBe("m3"); // old.psql: that address
        await again.kill("SIGKILL");
      } finally {
        await asPostgres("pg_ctl", "-D", next.data, "-m", "immediate", "-w", "stop").catch(() => {});
      }
    }, 90_000);
  });
}
