/**
 * When a node walks its host list again (postgres-hosts.ts), on Postgres servers the test owns
 * (pg-cluster.ts): a connection that closed while the node was idle, a change of what the role may
 * read, and a standby promoted while the old primary keeps running (review 10a M2, M3, M4).
 */
import { afterAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { havePostgres } from "../pg";
import { asPostgres, clusterDir, newPrimary, newStandby, until, type Cluster } from "./pg-cluster";
import { set, startServer, stopAll, tempDir, value } from "./harness";

const storeUrl = (hosts: Cluster[], schema: string, user = "postgres") => `postgres://${user}@${hosts.map((h) => h.host).join(",")}/postgres?schema=${schema}`;
const bodies = (c: Cluster, schema: string) => c.psql(`SELECT coalesce(string_agg(convert_from(body, 'UTF8'), ',' ORDER BY id), '-') FROM ${schema}.mcq_messages`);
const splitBrain = (to: Cluster, old: Cluster) =>
  `ERROR Postgres: split brain: ${to.host} (timeline 2) and ${old.host} (timeline 1) both take writes; writing to ${to.host}, the newest timeline; ` +
  `${old.host} must be fenced or rewound (pg_rewind) before it rejoins`;

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
}
