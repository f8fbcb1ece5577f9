/**
 * A batch's COMMIT whose answer does not come (tracker issue 10): it was sent, so Postgres may
 * have committed it. mcq must find out (postgres-batches.ts resolveCommit), never assume that it
 * failed: a get whose take committed gets its VALUE; one whose transaction was rolled back gets
 * SERVER_ERROR and its message stays in the queue. Never SERVER_ERROR with the message gone.
 *
 * A COMMIT that lands without answering, made deterministic: synchronous replication to a standby
 * that does not exist (synchronous_standby_names) makes every COMMIT write its record locally,
 * then wait; ending its backend then (pg_terminate_backend) leaves it committed. The test's own
 * connections commit with synchronous_commit = local, so they do not wait.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { SQL } from "bun";
import { join } from "node:path";
import { dropSchemas, freshSchema, havePostgres, PG_URL, pgStoreUrl } from "../pg";
import { set, startServer, stopAll, tempDir, value, type Running } from "./harness";

const schemas: string[] = [];

async function node(env: Record<string, string> = {}): Promise<{ server: Running; schema: string; sql: SQL }> {
  const schema = freshSchema("commit");
  schemas.push(schema);
  const server = await startServer(["--store", pgStoreUrl(schema)], join(tempDir(), "data"), undefined, env);
  const sql = new SQL(PG_URL!, { max: 1 });
  await sql.unsafe("SET synchronous_commit = local");
  return { server, schema, sql };
}

const rows = async (sql: SQL, schema: string) => Number((await sql.unsafe(`SELECT count(*)::int AS n FROM ${schema}.mcq_messages`))[0].n);

/** A deferred trigger on the deletion of a message: it runs at COMMIT, doing `body`. */
async function atCommit(sql: SQL, schema: string, body: string): Promise<void> {
  await sql.unsafe(`CREATE FUNCTION ${schema}.at_commit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN ${body}; RETURN NULL; END $$`);
  await sql.unsafe(
    `CREATE CONSTRAINT TRIGGER at_commit AFTER DELETE ON ${schema}.mcq_messages DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ${schema}.at_commit()`,
  );
}

/** Commits wait for a synchronous standby that never comes (all but those of synchronous_commit = local). */
async function standbyNeverAnswers(sql: SQL, on: boolean): Promise<void> {
  await sql.unsafe(on ? "ALTER SYSTEM SET synchronous_standby_names = 'mcq_no_such_standby'" : "ALTER SYSTEM RESET synchronous_standby_names");
  await sql.unsafe("SELECT pg_reload_conf()");
  // The postmaster reads the file after pg_reload_conf() returns, then signals every backend: once
  // this one has it, mcq's has been signalled too, and applies it before its next statement.
  const want = on ? "mcq_no_such_standby" : "";
  while ((await sql.unsafe("SHOW synchronous_standby_names"))[0].synchronous_standby_names !== want);
}

/**
 * The pid of the backend waiting on `event` (pg_stat_activity.wait_event), once there is one (each
 * check awaited); with `app`, only one whose application_name is that (a trigger sets it).
 */
async function waiting(sql: SQL, event: string, app = "%"): Promise<number> {
  for (const deadline = Date.now() + 10_000; Date.now() < deadline; ) {
    const found = await sql.unsafe(`SELECT pid FROM pg_stat_activity WHERE wait_event = $1 AND application_name LIKE $2`, [event, app]);
    if (found.length > 0) return Number(found[0].pid);
  }
  throw new Error(`no backend waited on ${event}`);
}

if (havePostgres("e2e postgres commit outcome")) {
  afterAll(async () => {
    const sql = new SQL(PG_URL!, { max: 1 });
    await standbyNeverAnswers(sql, false).catch(() => {});
    await sql.close();
    await stopAll();
    await dropSchemas(schemas);
  });

  describe("a COMMIT with no answer is resolved", () => {
    test("a COMMIT slower than the store's timeout (5 s): the get answers SERVER_ERROR, and its message is still in the queue", async () => {
      const { server, schema, sql } = await node();
      const c = await server.connect();
      expect(await c.call(set("q", "m1"))).toBe("STORED\r\n");
      await atCommit(sql, schema, "PERFORM pg_sleep(8)");
      // Resolution ends the backend that sleeps at COMMIT: the transaction is rolled back.
      expect(await c.call("get q\r\n", 15_000)).toBe("SERVER_ERROR Postgres: no answer within 5000 ms; the transaction was rolled back\r\n");
      expect(await rows(sql, schema)).toBe(1);
      await sql.unsafe(`DROP TRIGGER at_commit ON ${schema}.mcq_messages`);
      expect(await c.call("get q\r\n")).toBe(value("q", "m1") + "END\r\n");
      expect(await c.call("stats queue\r\n")).toBe("STAT q 1/1\r\nEND\r\n");
      c.close();
      await sql.close();
    }, 30_000);

    test("the backend ended while its COMMIT runs a deferred trigger: rolled back, SERVER_ERROR, the message stays", async () => {
      const { server, schema, sql } = await node();
      const c = await server.connect();
      expect(await c.call(set("q", "m1"))).toBe("STORED\r\n");
      // Named, so that no other backend asleep is ended instead.
      await atCommit(sql, schema, `PERFORM set_config('application_name', '${schema}', false); PERFORM pg_sleep(3)`);
      const reply = c.call("get q\r\n", 10_000);
      await sql.unsafe("SELECT pg_terminate_backend($1::int)", [await waiting(sql, "PgSleep", schema)]);
      expect(await reply).toBe("SERVER_ERROR Postgres: terminating connection due to administrator command; the transaction was rolled back\r\n");
      expect(await rows(sql, schema)).toBe(1);
      await sql.unsafe(`DROP TRIGGER at_commit ON ${schema}.mcq_messages`);
      expect(await c.call("get q\r\n")).toBe(value("q", "m1") + "END\r\n");
      c.close();
      await sql.close();
    }, 30_000);

    test("the backend ended after its COMMIT was written, before it answered: the batch stands, the get gets its VALUE", async () => {
      const { server, schema, sql } = await node();
      const c = await server.connect();
      expect(await c.call(set("q", "m1") + set("q", "m2"))).toBe("STORED\r\nSTORED\r\n");
      await standbyNeverAnswers(sql, true);
      try {
        const reply = c.call("get q\r\n", 10_000);
        await sql.unsafe("SELECT pg_terminate_backend($1::int)", [await waiting(sql, "SyncRep")]);
        expect(await reply).toBe(value("q", "m1") + "END\r\n");
      } finally {
        await standbyNeverAnswers(sql, false);
      }
      expect(await rows(sql, schema)).toBe(1);
      expect(await c.call("get q\r\nget q\r\n")).toBe(value("q", "m2") + "END\r\nEND\r\n");
      expect(await c.call("stats queue\r\n")).toBe("STAT q 2/2\r\nEND\r\n");
      c.close();
      await sql.close();
    }, 30_000);

    test("the server answering the lookup is not the one the batch ran on (a failover, a restart): its xid is not trusted, SERVER_ERROR, and the message is given back (review 6 F1)", async () => {
      // The identity recorded at connect stands for another server: the side connection's differs.
      const { server, schema, sql } = await node({ MCQ_TEST_PG_IDENTITY: "1/00000001/1" });
      const c = await server.connect();
      expect(await c.call(set("q", "m1") + set("q", "m2"))).toBe("STORED\r\nSTORED\r\n");
      await standbyNeverAnswers(sql, true);
      let reply: string;
      try {
        const pending = c.call("get q\r\n", 10_000);
        await sql.unsafe("SELECT pg_terminate_backend($1::int)", [await waiting(sql, "SyncRep")]);
        reply = await pending;
      } finally {
        await standbyNeverAnswers(sql, false);
      }
      // Before: "transaction N had committed: the batch stands" and VALUE, from an unchecked pg_xact_status.
      expect(reply).toMatch(/^SERVER_ERROR .*Postgres is not the server transaction \d+ ran on \(a failover or a restart\): its outcome is unknown\r\n$/);
      // Kept and asked about again: on another server the rows decide, and m1 (gone from the table) comes back.
      for (const deadline = Date.now() + 15_000; Date.now() < deadline && !server.stderr().includes("gave back 1 messages taken"); await Bun.sleep(50));
      expect(server.stderr()).toContain("cannot be asked about on this server (another server or timeline): gave back 1 messages taken and 0 opened");
      expect(await rows(sql, schema)).toBe(2);
      expect(await c.call("get q\r\nget q\r\nget q\r\n")).toBe(value("q", "m1") + "END\r\n" + value("q", "m2") + "END\r\nEND\r\n");
      expect(await c.call("stats queue\r\n")).toBe("STAT q 2/2\r\nEND\r\n");
      c.close();
      await sql.close();
    }, 30_000);

    test("a COMMIT held by a synchronous standby past the timeout: never cut short; the get answers SERVER_ERROR, and once the standby answers its message is given back", async () => {
      const { server, schema, sql } = await node();
      const c = await server.connect();
      expect(await c.call(set("q", "m1"))).toBe("STORED\r\n");
      await standbyNeverAnswers(sql, true);
      let reply: string;
      try {
        // Before: the lookup ended the waiting backend, which committed on the primary alone, and
        // the VALUE went out though the standby lacked the delete (a failover delivered m1 again).
        reply = await c.call("get q\r\n", 15_000);
      } finally {
        await standbyNeverAnswers(sql, false);
      }
      expect(reply).toMatch(/^SERVER_ERROR Postgres: no answer within 5000 ms; transaction \d+ is still in progress \(it could not be ended, or it waits for a synchronous standby\): its outcome is unknown\r\n$/);
      // The wait ended with the setting: the batch committed, and the node, asking again, gives m1 back.
      expect(await c.call("get q/t=10000\r\n", 15_000)).toBe(value("q/t=10000", "m1") + "END\r\n");
      expect(await rows(sql, schema)).toBe(0);
      expect(await c.call("stats queue\r\n")).toBe("STAT q 1/1\r\nEND\r\n");
      c.close();
      await sql.close();
    }, 40_000);
  });
}
