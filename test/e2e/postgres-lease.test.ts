/**
 * Each node's own lease (tracker issue 10, review 10a M5): real nodes on a real Postgres
 * (MCQ_TEST_PG) with different --node-timeout, as during a rolling change of the flag. A node is
 * dead when silent past its own --node-timeout, not the reaper's: before, a node with 3 s reaped
 * a live node with 30 s (which beats every 10 s) after 3 s, and handed out again the message its
 * consumer held open.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { SQL } from "bun";
import { join, resolve } from "node:path";
import { dropSchemas, freshSchema, havePostgres, PG_URL, pgStoreUrl } from "../pg";
import { set, startServer, stopAll, tempDir, value, type Running } from "./harness";

const schemas: string[] = [];
/** A commit of main whose Postgres schema is version 5 (the one review 10a read). */
const V5_COMMIT = "f03c187";
const ROOT = resolve(import.meta.dir, "../..");

/** The version-5 source, unpacked from git into a temp dir; null (and why) if the history lacks it (postgres-rolling.test.ts does the same). */
function versionFive(): string | null {
  const dir = tempDir();
  const git = Bun.spawnSync(["sh", "-c", `git -C '${ROOT}' archive ${V5_COMMIT} src package.json LICENSE | tar -x -C '${dir}'`], { stderr: "pipe" });
  if (git.exitCode === 0) return dir;
  const why = `leases: commit ${V5_COMMIT} is not in this checkout's history (${git.stderr.toString().trim()})`;
  if (process.env.CI === "true") throw new Error(why);
  console.log(`skipped: ${why}`);
  return null;
}

if (havePostgres("e2e postgres leases")) {
  const sql = new SQL(PG_URL!, { max: 1 });
  afterAll(async () => {
    await stopAll();
    await dropSchemas(schemas);
    await sql.close();
  });

  const node = (schema: string, timeoutS: number) =>
    startServer(["--store", pgStoreUrl(schema), "--node-timeout", String(timeoutS)], join(tempDir(), "data"));
  const idOf = async (schema: string, after: number) =>
    Number((await sql.unsafe(`SELECT max(id) AS id FROM ${schema}.mcq_nodes WHERE id > $1`, [after]))[0].id);
  const rows = async (schema: string) =>
    (await sql.unsafe(`SELECT id, lease_s FROM ${schema}.mcq_nodes ORDER BY id`)) as { id: number; lease_s: number | null }[];
  /** Seconds between the heartbeats of nodes `a` and `b` (a's minus b's), on Postgres's clock. */
  async function ahead(schema: string, a: number, b: number): Promise<number> {
    const [{ s }] = await sql.unsafe(
      `SELECT extract(epoch FROM (SELECT heartbeat FROM ${schema}.mcq_nodes WHERE id = $1) - (SELECT heartbeat FROM ${schema}.mcq_nodes WHERE id = $2))::float8 AS s`,
      [a, b],
    );
    if (s === null) throw new Error(`a row of nodes ${a}, ${b} is gone: ${JSON.stringify(await rows(schema))}`); // reaped
    return Number(s);
  }

  /** Waits (each check an awaited query) until `ok` holds; fails naming `what` after `ms`. */
  async function until(what: string, ok: () => Promise<boolean>, ms = 20_000): Promise<void> {
    for (const deadline = Date.now() + ms; !(await ok()); ) {
      if (Date.now() > deadline) throw new Error(`never: ${what}`);
      await Bun.sleep(50);
    }
  }

  describe("nodes with different --node-timeout", () => {
    test("a live node with 30 s is not reaped by one with 3 s while it is silent 3 s; killed (kill -9), the one with 3 s is reaped by the one with 30 s within its own 3 s", async () => {
      const schema = freshSchema("lease");
      schemas.push(schema);
      const long: Running = await node(schema, 30);
      const L = await idOf(schema, 0);
      const short: Running = await node(schema, 3);
      const S = await idOf(schema, L);
      expect(await rows(schema)).toEqual([{ id: L, lease_s: 30 }, { id: S, lease_s: 3 }]);
      const l = await long.connect();
      const s = await short.connect();
      expect(await l.call(set("q", "m1"))).toBe("STORED\r\n");
      expect(await l.call("get q/open\r\n")).toBe(value("q/open", "m1") + "END\r\n");
      // The short node beats (and reaps) every second; wait for a beat of it 5.5 s after the long
      // node's last (its first comes 10 s after its start), so that it reaped at least once while
      // the long one was silent past 3 s, having been connected for 3 s. Before: reaped at 3 s.
      await until("the short node beat 5.5 s after the long one", async () => (await ahead(schema, S, L)) > 5.5);
      expect((await rows(schema)).map((r) => r.id)).toEqual([L, S]);
      expect(await s.call("get q/open\r\n")).toBe("END\r\n");
      expect(short.stderr()).not.toContain("open messages of dead nodes returned");
      // The long node's consumer still holds m1: its close confirms it, once.
      expect(await l.call("get q/close\r\n")).toBe("END\r\n");
      expect((await sql.unsafe(`SELECT count(*)::int AS n FROM ${schema}.mcq_messages`))[0].n).toBe(0);

      // The long node has beaten since the short one registered: it now beats and reaps every
      // second too (a third of the shortest lease), and judges the short one by its 3 s.
      await until("the long node beat after the short one started", async () => (await ahead(schema, L, S)) > -2 && (await ahead(schema, L, S)) < 2, 20_000);
      expect(await s.call(set("q", "m2"))).toBe("STORED\r\n");
      expect(await s.call("get q/open\r\n")).toBe(value("q/open", "m2") + "END\r\n");
      await short.kill("SIGKILL");
      const killed = Date.now();
      // Before: judged by the long node's 30 s, m2 came back after 30-40 s.
      expect(await l.call("get q/open/t=8000\r\n", 12_000)).toBe(value("q/open/t=8000", "m2") + "END\r\n");
      const took = Date.now() - killed;
      expect(took).toBeLessThan(3000 + 1000 + 4000); // its lease, a beat of the long node, slack under load (before: 30 s and more)
      expect((await rows(schema)).map((r) => r.id)).toEqual([L]);
      expect(long.stderr()).toContain("INFO Postgres: 1 open messages of dead nodes returned to their queues");
      expect(await l.call("get q/close\r\n")).toBe("END\r\n");
    }, 60_000);

    test("a node of schema version 5 (no lease in its row) is judged by the reaper's lease", async () => {
      const schema = freshSchema("lease");
      schemas.push(schema);
      const a = await node(schema, 3);
      const A = await idOf(schema, 0);
      const c = await a.connect();
      expect(await c.call(set("q", "old"))).toBe("STORED\r\n");
      // An older node's row, as its register writes it (DEFAULT VALUES), holding `old` open, then silent.
      const [{ id: O }] = await sql.unsafe(`INSERT INTO ${schema}.mcq_nodes DEFAULT VALUES RETURNING id`);
      expect(await sql.unsafe(`UPDATE ${schema}.mcq_messages SET owner = $1 WHERE queue = 'q' RETURNING owner`, [O])).toEqual([{ owner: O }]);
      expect((await rows(schema)).map((r) => [r.id, r.lease_s])).toEqual([[A, 3], [O, null]]);
      expect(await c.call("get q/open/t=9000\r\n", 12_000)).toBe(value("q/open/t=9000", "old") + "END\r\n");
      expect((await rows(schema)).map((r) => r.id)).toEqual([A]);
      expect(await c.call("get q/close\r\n")).toBe("END\r\n");
    }, 30_000);

    test("a node of version 5 (the source at V5_COMMIT) serves on while a version-6 node migrates beside it; killed, it is reaped by the other's lease; then it no longer starts", async () => {
      const old = versionFive();
      if (old === null) return;
      const schema = freshSchema("lease");
      schemas.push(schema);
      const args = ["--store", pgStoreUrl(schema), "--node-timeout", "3"];
      const oldCommand = [process.execPath, join(old, "src/main.ts")];
      const env = { NODE_PATH: join(ROOT, "node_modules") };
      const v5 = await startServer(args, join(tempDir(), "v5"), oldCommand, env);
      const O = await idOf(schema, 0);
      const o = await v5.connect();
      expect(await o.call(set("q", "m1"))).toBe("STORED\r\n");
      const v6 = await startServer(args, join(tempDir(), "v6"));
      const N = await idOf(schema, O);
      const n = await v6.connect();
      expect((await sql.unsafe(`SELECT version FROM ${schema}.mcq_version`))[0].version).toBe(6);
      expect(await rows(schema)).toEqual([{ id: O, lease_s: null }, { id: N, lease_s: 3 }]);
      // Both serve, each the other's messages; the old node beats on the altered table: not reaped.
      expect(await n.call("get q\r\n" + set("q", "m2"))).toBe(value("q", "m1") + "END\r\nSTORED\r\n");
      const beatSince = async () =>
        (await sql.unsafe(`SELECT (SELECT heartbeat FROM ${schema}.mcq_nodes WHERE id = $1) > (SELECT started FROM ${schema}.mcq_nodes WHERE id = $2) AS y`, [O, N]))[0].y === true;
      await until("the old node beat after the migration", beatSince);
      expect(await o.call("get q/open\r\n")).toBe(value("q/open", "m2") + "END\r\n");
      expect((await rows(schema)).map((r) => r.id)).toEqual([O, N]);
      await v5.kill("SIGKILL");
      expect(await n.call("get q/t=9000\r\n", 12_000)).toBe(value("q/t=9000", "m2") + "END\r\n");
      expect((await rows(schema)).map((r) => r.id)).toEqual([N]);
      const late = Bun.spawn([...oldCommand, "-p", "0", "-H", join(tempDir(), "late"), ...args], { stdout: "ignore", stderr: "pipe", env: { ...process.env, ...env } });
      const [code, stderr] = await Promise.all([late.exited, new Response(late.stderr).text()]);
      expect([code, stderr.includes("is version 6, newer than this mcq knows (5): upgrade mcq")]).toEqual([1, true]);
      expect(await v6.kill()).toBe(0);
    }, 60_000);
  });
}
