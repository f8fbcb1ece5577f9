/**
 * A real mcq on a real Postgres (MCQ_TEST_PG) whose statements are made to fail in Postgres
 * (triggers) or held back (a lock taken by another session), at the moments the one-transaction-
 * per-turn design must get right: a failed batch is undone once and exactly; a message taken for
 * a client that left is never lost, whichever batch fails; a stop waits for what is in flight.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { SQL } from "bun";
import { join } from "node:path";
import { dropSchemas, freshSchema, havePostgres, PG_URL, pgStoreUrl } from "../pg";
import { set, startServer, stopAll, tempDir, value, type Running } from "./harness";

const schemas: string[] = [];

async function node(): Promise<{ server: Running; schema: string; sql: SQL }> {
  const schema = freshSchema("fail");
  schemas.push(schema);
  const server = await startServer(["--store", pgStoreUrl(schema)], join(tempDir(), "data"));
  return { server, schema, sql: new SQL(PG_URL!, { max: 1 }) };
}

/** Makes `event` on mcq_messages fail in Postgres for rows matching `when` (a trigger condition). */
async function failing(sql: SQL, schema: string, name: string, event: string, when: string): Promise<void> {
  await sql.unsafe(`CREATE FUNCTION ${schema}.${name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION '${name}'; END $$`);
  await sql.unsafe(`CREATE TRIGGER ${name} BEFORE ${event} ON ${schema}.mcq_messages FOR EACH ROW WHEN (${when}) EXECUTE FUNCTION ${schema}.${name}()`);
}

const rows = async (sql: SQL, schema: string, queue: string) =>
  Number((await sql.unsafe(`SELECT count(*)::int AS n FROM ${schema}.mcq_messages WHERE queue = $1`, [queue]))[0].n);

if (havePostgres("e2e postgres failures")) {
  afterAll(async () => {
    await stopAll();
    await dropSchemas(schemas);
  });

  describe("Postgres failures", () => {
    test("a batch that fails in Postgres, with a get in it, is undone exactly: stats queue counts nothing of it", async () => {
      const { server, schema, sql } = await node();
      await failing(sql, schema, "boom", "INSERT", "NEW.queue = 'boom'");
      const c = await server.connect();
      expect(await c.call(set("other", "x"))).toBe("STORED\r\n");
      // One batch: a set, a set Postgres refuses, and a get whose take is answered (rejected) first.
      expect(await c.call(set("good", "g") + set("boom", "b") + "get other\r\n")).toBe("SERVER_ERROR Postgres: boom\r\n".repeat(3));
      expect(await c.call("stats queue\r\n")).toBe("STAT other 1/0\r\nEND\r\n");
      expect(await rows(sql, schema, "good")).toBe(0);
      // The next batches are whole: the message the failed get took is there, once.
      expect(await c.call(set("good", "g"))).toBe("STORED\r\n");
      expect(await c.call("get other\r\nget other\r\n")).toBe(value("other", "x") + "END\r\nEND\r\n");
      expect(await c.call("stats queue\r\n")).toBe("STAT good 1/0\r\nSTAT other 1/1\r\nEND\r\n");
      const stats = await c.call("stats\r\n");
      expect(stats).toContain("STAT curr_items 1\r\n");
      expect(stats).toContain("STAT store_errors 1\r\n");
      c.close();
      await sql.close();
    }, 30_000);
  });
}
