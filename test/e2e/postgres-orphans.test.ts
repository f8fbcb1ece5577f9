/**
 * Open messages of a client that left while a batch touching them was committing, and that batch
 * failed at COMMIT (tracker issues 9 and 10, review 3 findings 1 and 2). A real mcq on a real
 * Postgres (MCQ_TEST_PG): a deferred constraint trigger makes the COMMIT wait for an advisory lock
 * the test holds, then raise; so the test chooses when the batch fails, after the server saw the
 * client leave.
 *
 * On SQLite the same failure cannot be arranged from outside: its commit ends the turn that ran
 * the requests, before the server reads the client's close.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { SQL } from "bun";
import { join } from "node:path";
import { dropSchemas, freshSchema, havePostgres, PG_URL, pgStoreUrl } from "../pg";
import { connectionsAre, set, startServer, stopAll, storeErrorsAre, tempDir, value, type Client, type Running } from "./harness";

const schemas: string[] = [];
let nextKey = 7301;

async function node(): Promise<{ server: Running; schema: string; sql: SQL }> {
  const schema = freshSchema("orphan");
  schemas.push(schema);
  const server = await startServer(["--store", pgStoreUrl(schema), "--http", "127.0.0.1:0"], join(tempDir(), "data"));
  return { server, schema, sql: new SQL(PG_URL!, { max: 1 }) };
}

/**
 * A batch that stores into queue `slow` fails at its COMMIT once the returned release() is called:
 * its deferred trigger first waits for advisory lock `key`, which `holder` (a session of its own)
 * holds until then.
 */
async function failAtCommit(sql: SQL, schema: string): Promise<{ key: number; release: () => Promise<void> }> {
  const key = nextKey++;
  const holder = new SQL(PG_URL!, { max: 1 });
  await holder.unsafe("BEGIN");
  await holder.unsafe(`SELECT pg_advisory_xact_lock(${key})`);
  await sql.unsafe(
    `CREATE FUNCTION ${schema}.late() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_advisory_xact_lock(${key}); RAISE EXCEPTION 'late'; END $$`,
  );
  await sql.unsafe(
    `CREATE CONSTRAINT TRIGGER late AFTER INSERT ON ${schema}.mcq_messages DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.queue = 'slow') EXECUTE FUNCTION ${schema}.late()`,
  );
  return {
    key,
    release: async () => {
      await holder.unsafe("COMMIT");
      await holder.close();
    },
  };
}

/** Waits until a COMMIT of the node waits for advisory lock `key` (each check is a query, awaited). */
async function committing(sql: SQL, key: number): Promise<void> {
  for (const deadline = Date.now() + 10_000; Date.now() < deadline; ) {
    const [{ n }] = await sql.unsafe(`SELECT count(*)::int AS n FROM pg_locks WHERE locktype = 'advisory' AND objid = $1 AND NOT granted`, [key]);
    if (n > 0) return;
  }
  throw new Error("the node's COMMIT never waited for the lock");
}

const owners = async (sql: SQL, schema: string) =>
  (await sql.unsafe(`SELECT owner FROM ${schema}.mcq_messages WHERE queue = 'q'`)).map((r: { owner: number | null }) => r.owner);

if (havePostgres("e2e postgres orphans")) {
  afterAll(async () => {
    await stopAll();
    await dropSchemas(schemas);
  });

  describe("Postgres: opens of a client that left while their batch failed", () => {
    for (const how of ["close", "abort"]) {
      test(`get q/${how} whose client left while its batch committed, and the COMMIT failed: the message goes back to the queue`, async () => {
        const { server, schema, sql } = await node();
        const c = await server.connect();
        expect(await c.call(set("q", "m"))).toBe("STORED\r\n");
        const a = await server.connect();
        expect(await a.call("get q/open\r\n")).toBe(value("q/open", "m") + "END\r\n");
        const { key, release } = await failAtCommit(sql, schema);
        // One batch: a set that fails at COMMIT, and the confirm (or abort) of A's open message.
        a.write(set("slow", "x") + `get q/${how}\r\n`);
        await committing(sql, key);
        a.close();
        await connectionsAre(server, 1); // the server saw A leave: its end found no open message
        await release();
        await storeErrorsAre(c, 1);
        await sql.unsafe(`DROP TRIGGER late ON ${schema}.mcq_messages`);
        // The confirm (or abort) was undone, and nobody holds the message: it is delivered again.
        expect(await c.call("get q/t=5000\r\n", 8000)).toBe(value("q/t=5000", "m") + "END\r\n");
        expect(await c.call("stats queue q\r\n")).toContain("STAT items 0\r\nSTAT bytes 0\r\nSTAT total 1\r\nSTAT fetched 1\r\nSTAT open 0\r\n");
        expect(await owners(sql, schema)).toEqual([]);
        c.close();
        await sql.close();
      }, 30_000);
    }

    /** One round of the test below (before the fix, about two rounds in three delivered the message twice). */
    async function laterOpen(): Promise<void> {
      const { server, schema, sql } = await node();
      const c = await server.connect();
      expect(await c.call(set("q", "m"))).toBe("STORED\r\n");
      const { key, release } = await failAtCommit(sql, schema);
      // A's open is taken in batch E1, which fails at COMMIT after A left; A's end released it in E2.
      const a = await server.connect();
      a.write(set("slow", "x") + "get q/open\r\n");
      await committing(sql, key);
      a.close();
      await connectionsAre(server, 1);
      await release();
      // B opens the message as soon as the failure returned it (each get is a reply, awaited; one
      // that was in a batch behind E1 is undone with it: SERVER_ERROR).
      const b = await server.connect();
      let got = "";
      for (let i = 0; i < 10_000 && !got.startsWith("VALUE"); i++) got = await b.call("get q/open\r\n");
      expect(got).toBe(value("q/open", "m") + "END\r\n");
      await sql.unsafe(`DROP TRIGGER late ON ${schema}.mcq_messages`);
      // A's release was undone with A's open: nothing may release B's open now. The server's
      // housekeeping (every 200 ms) runs its retries while this get waits 1 s for a message.
      expect(await c.call("get q/t=1000\r\n", 5000)).toBe("END\r\n");
      expect(await b.call("get q/close\r\n")).toBe("END\r\n");
      expect(await c.call("stats queue q\r\n")).toContain("STAT items 0\r\nSTAT bytes 0\r\nSTAT total 1\r\nSTAT fetched 1\r\nSTAT open 0\r\n");
      expect(await owners(sql, schema)).toEqual([]);
      c.close();
      await sql.close();
      await server.kill();
    }

    // The old retry ran at the first housekeeping tick after the failure: B's open had to come
    // before it, which it does most times, not always; three rounds make a miss unlikely.
    test("an open whose client left while its batch committed, and the COMMIT failed: a later open of the message by another client stands", async () => {
      for (let round = 0; round < 3; round++) await laterOpen();
    }, 60_000);
  });
}
