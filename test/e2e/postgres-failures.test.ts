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
import { connectionsAre, set, startServer, stopAll, storeErrorsAre, tempDir, value, type Client, type Running } from "./harness";

const schemas: string[] = [];

async function node(extra: string[] = []): Promise<{ server: Running; schema: string; sql: SQL }> {
  const schema = freshSchema("fail");
  schemas.push(schema);
  const server = await startServer(["--store", pgStoreUrl(schema), ...extra], join(tempDir(), "data"));
  return { server, schema, sql: new SQL(PG_URL!, { max: 1 }) };
}

/** Another session holding mcq_messages locked: the node's next statement on it waits. */
async function lockMessages(schema: string): Promise<SQL> {
  const locker = new SQL(PG_URL!, { max: 1 });
  await locker.unsafe("BEGIN");
  await locker.unsafe(`LOCK TABLE ${schema}.mcq_messages IN ACCESS EXCLUSIVE MODE`);
  return locker;
}

/** Waits until a statement of the node on `schema` waits for the lock (each check is a query, awaited). */
async function blocked(sql: SQL, schema: string): Promise<void> {
  for (const deadline = Date.now() + 10_000; Date.now() < deadline; ) {
    const [{ n }] = await sql.unsafe(
      `SELECT count(*)::int AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND position($1 IN query) > 0`,
      [`${schema}.mcq_messages`],
    );
    if (n > 0) return;
  }
  throw new Error("the node's statement never waited for the lock");
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

    // The take of batch E is answered after its client left, and the give-back goes in batch E+1;
    // E commits (the message is gone from Postgres) and E+1 fails: the give-back must be redone.
    const forms = [
      { get: "get q", how: "a deferred get (get-deferred.ts)", event: "INSERT", when: "NEW.queue = 'q'" },
      { get: "get q x", how: "a get of two keys (get.ts)", event: "INSERT", when: "NEW.queue = 'q'" },
      { get: "get q/open", how: "an open (get.ts, released)", event: "UPDATE", when: "NEW.queue = 'q' AND NEW.owner IS NULL" },
    ];
    for (const f of forms) {
      test(`${f.how} whose client left before Postgres answered: its message comes back though the give-back's batch failed`, async () => {
        const { server, schema, sql } = await node(["--http", "127.0.0.1:0"]);
        const c = await server.connect();
        expect(await c.call(set("q", "m"))).toBe("STORED\r\n");
        const locker = await lockMessages(schema);
        const getter = await server.connect();
        getter.write(`${f.get}\r\n`);
        await blocked(sql, schema);
        getter.close();
        await connectionsAre(server, 1); // the server saw it leave: the take answers to a closed session
        // The take's batch goes on and commits; the give-back (a restore, or a release) fails in Postgres.
        await locker.unsafe(`CREATE FUNCTION ${schema}.noback() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'noback'; END $$`);
        await locker.unsafe(`CREATE TRIGGER noback BEFORE ${f.event} ON ${schema}.mcq_messages FOR EACH ROW WHEN (${f.when}) EXECUTE FUNCTION ${schema}.noback()`);
        await locker.unsafe("COMMIT");
        await storeErrorsAre(c, 1);
        await sql.unsafe(`DROP TRIGGER noback ON ${schema}.mcq_messages`);
        expect(await c.call("get q/t=5000\r\n", 8000)).toBe(value("q/t=5000", "m") + "END\r\n");
        expect(await c.call("stats queue q\r\n")).toContain("STAT items 0\r\nSTAT bytes 0\r\nSTAT total 1\r\nSTAT fetched 1\r\nSTAT open 0\r\n");
        expect(await rows(sql, schema, "q")).toBe(0);
        c.close();
        await Promise.all([locker.close(), sql.close()]);
      }, 30_000);
    }

    test("SIGTERM while a get's take waits in Postgres, its client gone: the stop waits for it, and the message goes back before the store closes", async () => {
      const { server, schema, sql } = await node(["--http", "127.0.0.1:0"]);
      const c = await server.connect();
      expect(await c.call(set("q", "m"))).toBe("STORED\r\n");
      c.close();
      const locker = await lockMessages(schema);
      const getter = await server.connect();
      getter.write("get q\r\n");
      await blocked(sql, schema);
      getter.close();
      await connectionsAre(server, 0);
      const exited = server.kill("SIGTERM");
      // With no connection left to answer, the stop reaches the store within a few ms of this line;
      // nothing can be awaited in between (the take holds the store's one connection).
      while (!server.stderr().includes("SIGTERM: stopping")) await Bun.sleep(5);
      await Bun.sleep(300);
      await locker.unsafe("COMMIT"); // the take deletes the row and answers to a session gone
      expect(await exited).toBe(0);
      expect(await rows(sql, schema, "q")).toBe(1);
      expect(server.stderr()).not.toContain("error");
      await Promise.all([locker.close(), sql.close()]);
    }, 30_000);
  });
}
