/**
 * A node reaped while it runs on (tracker issue 10, review finding 5): two real nodes on a real
 * Postgres (MCQ_TEST_PG) with --node-timeout 1; node B is paused (SIGSTOP: a GC pause, a VM
 * stall, a partition) until node A has reaped it, then resumed. B must not run on unregistered
 * (an open it makes and then dies holding comes back), and a consumer of B that held a message
 * across the reap must not confirm it: another may hold it now.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { SQL } from "bun";
import { join } from "node:path";
import { dropSchemas, freshSchema, havePostgres, PG_URL, pgStoreUrl } from "../pg";
import { set, startServer, stopAll, tempDir, value, type Running } from "./harness";

const schemas: string[] = [];
const A_FAILED = "SERVER_ERROR Postgres: boom\r\nSERVER_ERROR Postgres: boom\r\n";

if (havePostgres("e2e postgres reaped node")) {
  const sql = new SQL(PG_URL!, { max: 1 });
  afterAll(async () => {
    await stopAll();
    await dropSchemas(schemas);
    await sql.close();
  });

  /** Nodes A and B on one fresh schema, each declaring the other dead after 1 s of silence. */
  async function pair(): Promise<{ A: Running; B: Running; schema: string }> {
    const schema = freshSchema("reaped");
    schemas.push(schema);
    const A = await startServer(["--store", pgStoreUrl(schema), "--node-timeout", "1"], join(tempDir(), "data"));
    const B = await startServer(["--store", pgStoreUrl(schema), "--node-timeout", "1"], join(tempDir(), "data"));
    return { A, B, schema };
  }

  const nodes = async (schema: string) => ((await sql.unsafe(`SELECT id FROM ${schema}.mcq_nodes ORDER BY id`)) as { id: number }[]).length;

  /** Pauses B until A has reaped it (its row gone), then resumes it. Each check is an awaited query. */
  async function reapWhilePaused(B: Running, schema: string): Promise<void> {
    B.proc.kill("SIGSTOP");
    try {
      for (const deadline = Date.now() + 15_000; (await nodes(schema)) !== 1; ) {
        if (Date.now() > deadline) throw new Error("A never reaped B");
        await Bun.sleep(50);
      }
    } finally {
      B.proc.kill("SIGCONT");
    }
  }

  /** Waits until B's heartbeat has found its row gone and said so. */
  async function noticed(B: Running): Promise<void> {
    for (const deadline = Date.now() + 10_000; !B.stderr().includes("had been reaped by another node"); ) {
      if (Date.now() > deadline) throw new Error(`B never noticed it was reaped:\n${B.stderr()}`);
      await Bun.sleep(20);
    }
  }

  /** One node, its row deleted and its opens freed (as a reaper does) while its heartbeat sleeps in its INSERT. */
  async function reapUnderHeartbeat(): Promise<{ server: Running; schema: string; me: number }> {
    const schema = freshSchema("reaped");
    schemas.push(schema);
    const server = await startServer(["--store", pgStoreUrl(schema), "--node-timeout", "3"], join(tempDir(), "data"));
    const [{ id: me }] = await sql.unsafe(`SELECT id FROM ${schema}.mcq_nodes`);
    return { server, schema, me };
  }

  async function trigger(schema: string, name: string, body: string, create: string): Promise<void> {
    await sql.unsafe(`CREATE FUNCTION ${schema}.${name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN ${body} END $$`);
    await sql.unsafe(create.replaceAll("$S", schema));
  }

  /** Reaps node `me` and waits until its heartbeat sleeps in the INSERT putting its row back. */
  async function reapNow(schema: string, me: number): Promise<void> {
    await trigger(schema, "slownode", "PERFORM pg_sleep(1.5); RETURN NEW;", `CREATE TRIGGER slownode BEFORE INSERT ON $S.mcq_nodes FOR EACH ROW EXECUTE FUNCTION $S.slownode()`);
    await sql.unsafe(`DELETE FROM ${schema}.mcq_nodes WHERE id = ${me}`);
    await sql.unsafe(`UPDATE ${schema}.mcq_messages SET owner = NULL WHERE owner = ${me}`);
    for (const deadline = Date.now() + 10_000; ; ) {
      const r = await sql.unsafe(`SELECT 1 FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%back AS (INSERT INTO ${schema}.%' AND pid <> pg_backend_pid()`);
      if (r.length > 0) break;
      if (Date.now() > deadline) throw new Error("the heartbeat never ran");
      await Bun.sleep(10);
    }
  }

  const count = async (schema: string) => (await sql.unsafe(`SELECT count(*)::int AS n FROM ${schema}.mcq_messages`))[0].n as number;

  describe("a node reaped while it ran on", () => {
    test("its row comes back: what it opens after, then dies holding (kill -9), returns to the queue", async () => {
      const { A, B, schema } = await pair();
      const a = await A.connect();
      expect(await a.call(set("q", "m1"))).toBe("STORED\r\n");
      await reapWhilePaused(B, schema);
      const b = await B.connect();
      expect(await b.call("get q/open\r\n")).toBe(value("q/open", "m1") + "END\r\n");
      await B.kill("SIGKILL");
      // Before: B had no row for good, so no reaper ever returned m1 (END after 6 s).
      expect(await a.call("get q/t=6000\r\n", 10_000)).toBe(value("q/t=6000", "m1") + "END\r\n");
      expect(await nodes(schema)).toBe(1);
    }, 40_000);

    test("a message it held open across the reap: its consumer's close answers as after an expired lease, and the consumer on the other node keeps it", async () => {
      const { A, B, schema } = await pair();
      const a = await A.connect();
      const b = await B.connect();
      expect(await a.call(set("q", "m1"))).toBe("STORED\r\n");
      expect(await b.call("get q/open\r\n")).toBe(value("q/open", "m1") + "END\r\n");
      await reapWhilePaused(B, schema);
      // The reaper returned m1: a consumer on A has it now.
      expect(await a.call("get q/open\r\n")).toBe(value("q/open", "m1") + "END\r\n");
      await noticed(B);
      expect(B.stderr()).toMatch(/WARN Postgres: node \d+ had been reaped by another node \(no heartbeat for --node-timeout 1 s\): its row is back; the 1 messages it held open went back to their queues \(0 of them now\)/);
      expect(await nodes(schema)).toBe(2);
      // B's consumer still believes it holds m1: its close must not confirm what A's consumer holds.
      expect(await b.call("get q/close\r\n")).toBe("CLIENT_ERROR the open message's lease expired; it is back in its queue\r\n");
      // A's consumer confirms it, once: the queue is empty, on either node.
      expect(await a.call("get q/close\r\n")).toBe("END\r\n");
      expect(await b.call("get q\r\n")).toBe("END\r\n");
      const [row] = await sql.unsafe(`SELECT count(*)::int AS n FROM ${schema}.mcq_messages`);
      expect(row.n).toBe(0);
      // B serves on, registered: it opens and confirms as before.
      expect(await a.call(set("q", "m2"))).toBe("STORED\r\n");
      expect(await b.call("get q/open\r\n")).toBe(value("q/open", "m2") + "END\r\n");
      expect(await b.call("get q/close\r\n")).toBe("END\r\n");
      expect(await a.call("get q\r\n")).toBe("END\r\n");
    }, 40_000);

    test("a close undone after the heartbeat found the node reaped gives nothing back: the next consumer keeps the message, the first one's close answers as after an expired lease", async () => {
      const { server, schema, me } = await reapUnderHeartbeat();
      const a = await server.connect();
      expect(await a.call(set("q", "m"))).toBe("STORED\r\n");
      expect(await a.call("get q/open\r\n")).toBe(value("q/open", "m") + "END\r\n");
      await trigger(schema, "boom", "RAISE EXCEPTION 'boom';", `CREATE CONSTRAINT TRIGGER boom AFTER INSERT ON $S.mcq_messages DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.queue = 'slow') EXECUTE FUNCTION $S.boom()`);
      await reapNow(schema, me);
      // A's close goes in a batch behind the heartbeat, which that batch's set fails at COMMIT.
      expect(await a.call(set("slow", "x") + "get q/close\r\n", 8000)).toBe(A_FAILED);
      const b = await server.connect();
      // Before: the undo gave A's session and the node m back; A's close then confirmed B's open.
      expect(await b.call("get q/open\r\n")).toBe(value("q/open", "m") + "END\r\n");
      expect(await a.call("get q/close\r\n")).toBe("CLIENT_ERROR the open message's lease expired; it is back in its queue\r\n");
      expect(await count(schema)).toBe(1);
      expect(await b.call("get q/close\r\n")).toBe("END\r\n");
      expect(await count(schema)).toBe(0);
    }, 30_000);

    test("an open taken after the heartbeat found the node reaped stays open: only the lost ones are dropped", async () => {
      const { server, schema, me } = await reapUnderHeartbeat();
      const a = await server.connect();
      expect(await a.call(set("q", "m"))).toBe("STORED\r\n");
      expect(await a.call("get q/open\r\n")).toBe(value("q/open", "m") + "END\r\n");
      await reapNow(schema, me);
      const c = await server.connect();
      // C's open goes behind the heartbeat: it gets m, which the reap freed.
      expect(await c.call("get q/open\r\n", 8000)).toBe(value("q/open", "m") + "END\r\n");
      expect(await a.call("get q/close\r\n")).toBe("CLIENT_ERROR the open message's lease expired; it is back in its queue\r\n");
      // Before: C's open was dropped too (lease expired), and m stayed owned by the node, in no session.
      expect(await c.call("get q/close\r\n")).toBe("END\r\n");
      expect(await count(schema)).toBe(0);
    }, 30_000);
  });
}
