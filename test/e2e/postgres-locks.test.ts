/**
 * Lock order and answers of delete and flush on the Postgres store, across nodes (MCQ_TEST_PG,
 * see test/pg.ts): a `delete q` on one node and a `flush q` on another must not deadlock
 * (review 9 N3), and a delete answers from what its statement deleted, not from the node's view
 * (N4).
 */
import { SQL } from "bun";
import { afterAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { dropSchemas, freshSchema, havePostgres, PG_URL, pgStoreUrl } from "../pg";
import { set, startServer, stopAll, tempDir } from "./harness";

const schemas: string[] = [];

async function twoNodes() {
  const schema = freshSchema("locks");
  schemas.push(schema);
  const url = pgStoreUrl(schema);
  const nodes = [await startServer(["--store", url], join(tempDir(), "a")), await startServer(["--store", url], join(tempDir(), "d"))];
  const [a, d] = [await nodes[0]!.connect(), await nodes[1]!.connect()];
  return { schema, nodes, a, d, sql: new SQL(PG_URL!, { max: 2 }) };
}

/** Messages and counter rows of `queue`, and the sums of the counter rows. */
async function rowsOf(sql: SQL, schema: string, queue: string) {
  const [r] = await sql.unsafe(
    `SELECT (SELECT count(*) FROM ${schema}.mcq_messages WHERE queue = $1)::int AS messages,
       (SELECT count(*) FROM ${schema}.mcq_counters WHERE queue = $1)::int AS "counterRows",
       (SELECT coalesce(sum(items), 0) FROM ${schema}.mcq_counters WHERE queue = $1)::int AS items`,
    [queue],
  );
  return { ...r };
}

/**
 * Every DELETE of a message in `schema` first takes advisory lock `key` (shared): a session holding
 * it exclusively stops the deleting statement at its first row. Returns how many backends on the
 * schema's statements wait for a lock matching `what` (SQL on pg_stat_activity).
 */
async function holdDeletes(sql: SQL, schema: string, key: number) {
  await sql.unsafe(`CREATE FUNCTION ${schema}.hold() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
    PERFORM pg_advisory_xact_lock_shared(${key}); RETURN OLD; END $$`);
  await sql.unsafe(`CREATE TRIGGER hold BEFORE DELETE ON ${schema}.mcq_messages FOR EACH ROW EXECUTE FUNCTION ${schema}.hold()`);
  return async (what: string) =>
    Number((await sql.unsafe(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND ${what} AND query LIKE '%${schema}.%'`))[0].n);
}

if (havePostgres("delete and flush lock order on Postgres")) {
  afterAll(async () => {
    await stopAll();
    await dropSchemas(schemas);
  });

  describe("delete and flush across nodes on Postgres", () => {
    for (const flush of ["flush q", "flush_all"]) {
      test(`${flush} on one node and delete q on another do not deadlock: OK and DELETED, nothing left`, async () => {
        const { schema, nodes, a, d, sql } = await twoNodes();
        const holder = new SQL(PG_URL!, { max: 1 }); // one session: the advisory lock a's flush waits for
        const key = 815_1010;
        expect(await d.call(set("q", "x").repeat(20))).toBe("STORED\r\n".repeat(20));
        // a's flush stops at its first message, holding it, until d's delete waits for a lock: review 9's
        // b_deadlock (a long flush of 300,000 rows, the delete 150 ms into it) without its timing.
        const waiting = await holdDeletes(sql, schema, key);
        await holder.unsafe(`SELECT pg_advisory_lock(${key})`);
        const flushed = a.call(`${flush}\r\n`);
        while ((await waiting("wait_event = 'advisory'")) === 0);
        const deleted = d.call("delete q\r\n");
        // d's delete waits: for a's counter row (fixed), or for a message a's flush holds (before).
        while ((await waiting("true")) < 2);
        await holder.unsafe(`SELECT pg_advisory_unlock(${key})`);
        // Before: one of them got "SERVER_ERROR Postgres: deadlock detected" after deadlock_timeout (1 s).
        expect([await flushed, await deleted]).toEqual(["OK\r\n", "DELETED\r\n"]);
        expect(await rowsOf(sql, schema, "q")).toEqual({ messages: 0, counterRows: 0, items: 0 });
        for (const c of [a, d]) expect(await c.call("stats queue q\r\nget q\r\n")).toBe("END\r\nEND\r\n");
        // The queue works on after it, counted exactly.
        expect(await a.call(set("q", "after"))).toBe("STORED\r\n");
        expect(await rowsOf(sql, schema, "q")).toEqual({ messages: 1, counterRows: 1, items: 1 });
        await Promise.all([sql.close(), holder.close()]);
        await Promise.all(nodes.map((n) => n.kill()));
      });
    }

    for (const flush of ["flush q", "flush_all"]) {
      test(`delete q on one node, then ${flush} on another while the delete holds q's counter rows: the queue stays deleted (review 11a F2)`, async () => {
        const { schema, nodes, a, d, sql } = await twoNodes();
        const holder = new SQL(PG_URL!, { max: 1 });
        const key = 815_1011;
        expect(await a.call(set("q", "x").repeat(5) + set("other", "y"))).toBe("STORED\r\n".repeat(6));
        // d's delete stops at its first message, holding q's counter rows, until a's flush waits for one.
        const waiting = await holdDeletes(sql, schema, key);
        await holder.unsafe(`SELECT pg_advisory_lock(${key})`);
        const deleted = d.call("delete q\r\n");
        while ((await waiting("wait_event = 'advisory'")) === 0);
        const flushed = a.call(`${flush}\r\n`);
        while ((await waiting("true")) < 2);
        await holder.unsafe(`SELECT pg_advisory_unlock(${key})`);
        expect([await deleted, await flushed]).toEqual(["DELETED\r\n", "OK\r\n"]);
        // Before: the flush's lock made a's counter row of q again once the delete had committed: q was back.
        expect(await rowsOf(sql, schema, "q")).toEqual({ messages: 0, counterRows: 0, items: 0 });
        for (const c of [a, d]) expect(await c.call("stats queue q\r\n")).toBe("END\r\n");
        expect(await d.call("delete q\r\n")).toBe("NOT_FOUND\r\n");
        expect(await rowsOf(sql, schema, "other")).toEqual({ messages: flush === "flush q" ? 1 : 0, counterRows: 1, items: flush === "flush q" ? 1 : 0 });
        // A flush_all on d adds a row of d's only where it deleted something (counted in its row), not
        // in every queue (review 11a F4: it made one per queue).
        expect(await d.call("flush_all\r\n")).toBe("OK\r\n");
        expect(await rowsOf(sql, schema, "other")).toEqual({ messages: 0, counterRows: flush === "flush q" ? 2 : 1, items: 0 });
        await Promise.all([sql.close(), holder.close()]);
        await Promise.all(nodes.map((n) => n.kill()));
      });
    }

    test("delete answers from what its statement found, not from the node's view: DELETED for what a load or another node made just now", async () => {
      const { schema, nodes, a, d, sql } = await twoNodes();
      expect(await a.call(set("p", "x"))).toBe("STORED\r\n");
      // What a load commits (review 9 f_notfound.ts): messages and a node -1 counter row a's view has not read yet.
      await sql.unsafe(`INSERT INTO ${schema}.mcq_messages (queue, flags, created, expires, body) SELECT 'q', 0, 1, 0, '\\x00'::bytea FROM generate_series(1, 5)`);
      await sql.unsafe(`INSERT INTO ${schema}.mcq_counters (queue, node, items, bytes, total) VALUES ('q', -1, 5, 5, 5)`);
      // Before: NOT_FOUND, while the 5 stored messages were deleted.
      expect(await a.call("delete q\r\n")).toBe("DELETED\r\n");
      expect(await rowsOf(sql, schema, "q")).toEqual({ messages: 0, counterRows: 0, items: 0 });
      // Messages whose counter rows were lost (review 7 F4) still make the queue exist.
      await sql.unsafe(`INSERT INTO ${schema}.mcq_messages (queue, flags, created, expires, body) VALUES ('lost', 0, 1, 0, '\\x00'::bytea)`);
      expect(await a.call("delete lost\r\ndelete lost\r\ndelete never\r\n")).toBe("DELETED\r\nNOT_FOUND\r\nNOT_FOUND\r\n");
      // The other way: a's view knows r, d deleted it just now.
      expect(await d.call(set("r", "x"))).toBe("STORED\r\n");
      expect(await a.call("stats queue r\r\n")).toContain("STAT items 1\r\n"); // read again: a's view knows r
      expect(await d.call("delete r\r\n")).toBe("DELETED\r\n");
      expect(await a.call("delete r\r\n")).toBe("NOT_FOUND\r\n");
      // noreply: nothing said, the queue deleted all the same; the next request answers as before.
      expect(await d.call(set("n", "x") + "delete n noreply\r\ndelete p\r\n")).toBe("STORED\r\nDELETED\r\n");
      for (const q of ["n", "p", "r", "lost"]) expect(await rowsOf(sql, schema, q)).toEqual({ messages: 0, counterRows: 0, items: 0 });
      await sql.close();
      await Promise.all(nodes.map((n) => n.kill()));
    });
  });
}
