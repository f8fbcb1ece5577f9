/**
 * flush, flush_all and delete on the Postgres store, across nodes (MCQ_TEST_PG, see test/pg.ts):
 * the counters stay exact when another node wrote what this node's view has not read yet
 * (review 7 F3), and when a delete races another node's sets (F4).
 */
import { SQL } from "bun";
import { afterAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { dropSchemas, freshSchema, havePostgres, PG_URL, pgStoreUrl } from "../pg";
import { queueStats, set, startServer, stopAll, tempDir, value } from "./harness";

const schemas: string[] = [];

/** Two nodes on one fresh schema (`extra`: node a's flags), and a connection to Postgres. */
async function twoNodes(extra: string[] = []) {
  const schema = freshSchema("empty");
  schemas.push(schema);
  const url = pgStoreUrl(schema);
  const nodes = [await startServer(["--store", url, ...extra], join(tempDir(), "a")), await startServer(["--store", url], join(tempDir(), "b"))];
  const [a, b] = [await nodes[0]!.connect(), await nodes[1]!.connect()];
  return { schema, nodes, a, b, sql: new SQL(PG_URL!, { max: 2 }) };
}

/** Per queue, what the tables hold and what the counter rows sum to: equal when the counters are exact. */
async function tables(sql: SQL, schema: string) {
  const rows = await sql.unsafe(
    `SELECT queue, sum(n)::int AS n, sum(items)::int AS items, sum(open)::int AS open, sum(owned)::int AS owned, sum(delayed)::int AS delayed,
       sum(waiting)::int AS waiting
     FROM (SELECT queue, 1 AS n, 0 AS items, 0 AS open, (owner IS NOT NULL)::int AS owned, 0 AS delayed, 0 AS waiting FROM ${schema}.mcq_messages
       UNION ALL SELECT queue, 1, 0, 0, 0, 0, 1 FROM ${schema}.mcq_delayed
       UNION ALL SELECT queue, 0, items, open, 0, delayed, 0 FROM ${schema}.mcq_counters) x GROUP BY queue ORDER BY queue`,
  );
  return rows.map((r: Record<string, unknown>) => ({ ...r }));
}

if (havePostgres("flush and delete on Postgres")) {
  afterAll(async () => {
    await stopAll();
    await dropSchemas(schemas);
  });

  describe("flush and delete across nodes on Postgres", () => {
    test("flush and flush_all count what they deleted, not what the node's view knew: stats exact on both nodes, max_items not stuck", async () => {
      const { schema, nodes, a, b, sql } = await twoNodes(["--max-items", "500"]);
      expect(await a.call(set("q", "x").repeat(5))).toBe("STORED\r\n".repeat(5));
      expect(await queueStats(a, "q")).toMatchObject({ items: 5 }); // a's view knows q
      // b: 1000 sets, a delayed one, and one opened; a flushes before its view has read them (it reads every second).
      expect(await b.call(set("q", "y").repeat(1000) + "set q/delay=600000 0 0 1\r\nd\r\nget q/open\r\n")).toBe(
        "STORED\r\n".repeat(1001) + value("q/open", "x") + "END\r\n",
      );
      expect(await a.call("flush q\r\n")).toBe("OK\r\n");
      for (const c of [a, b]) expect(await queueStats(c, "q")).toMatchObject({ items: 0, bytes: 0, open: 0, delayed: 0, total: 1006, fetched: 0 });
      // Before: a counted out the 5 it knew of, q said items 1001 on an empty queue, and a refused every set (max_items 500).
      expect(await a.call(set("q", "z"))).toBe("STORED\r\n");
      expect(await b.call("get q/close\r\nget q\r\nget q\r\n")).toBe("END\r\n" + value("q", "z") + "END\r\nEND\r\n");
      // flush_all on a that has not read b's queue r at all.
      expect(await b.call(set("r", "w").repeat(100))).toBe("STORED\r\n".repeat(100));
      expect(await a.call("flush_all\r\n")).toBe("OK\r\n");
      for (const c of [a, b]) {
        expect(await queueStats(c, "q")).toMatchObject({ items: 0, open: 0, total: 1007, fetched: 1 });
        expect(await queueStats(c, "r")).toMatchObject({ items: 0, bytes: 0, total: 100 });
      }
      expect(await tables(sql, schema)).toEqual([
        { queue: "q", n: 0, items: 0, open: 0, owned: 0, delayed: 0, waiting: 0 },
        { queue: "r", n: 0, items: 0, open: 0, owned: 0, delayed: 0, waiting: 0 },
      ]);
      await sql.close();
      await Promise.all(nodes.map((n) => n.kill()));
    });

    test("a delete racing another node's sets leaves no message without its counters: held between the sets' counters and their COMMIT", async () => {
      const { schema, nodes, a, b, sql } = await twoNodes();
      const holder = new SQL(PG_URL!, { max: 1 }); // one session: the advisory lock the writer waits for
      const key = 815_1004;
      // b's counter row for the queue gains total (its sets): its batch waits here, after the upsert, before COMMIT.
      await sql.unsafe(`CREATE FUNCTION ${schema}.hold() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
        IF NEW.total > 0 AND (TG_OP = 'INSERT' OR NEW.total > OLD.total) THEN PERFORM pg_advisory_xact_lock(${key}); END IF; RETURN NEW; END $$`);
      const waiting = async (what: string) =>
        Number((await sql.unsafe(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND ${what}`))[0].n) > 0;
      /** b sets twice into `queue` while a deletes it, a's drop sent while b's batch is held. */
      const race = async (queue: string) => {
        await sql.unsafe(`CREATE TRIGGER hold_${queue} AFTER INSERT OR UPDATE ON ${schema}.mcq_counters FOR EACH ROW
          WHEN (NEW.queue = '${queue}' AND NEW.node > 0) EXECUTE FUNCTION ${schema}.hold()`);
        await holder.unsafe(`SELECT pg_advisory_lock(${key})`);
        const sets = b.call(set(queue, "new1") + set(queue, "new2"));
        while (!(await waiting("wait_event = 'advisory'")));
        let replied = false;
        const dropped = a.call(`delete ${queue}\r\n`).finally(() => (replied = true));
        // a's drop waits for b's counter row (before and after the fix), unless it had nothing to wait for.
        while (!replied && !(await waiting("wait_event <> 'advisory'")));
        await holder.unsafe(`SELECT pg_advisory_unlock(${key})`);
        expect([await sets, await dropped]).toEqual(["STORED\r\nSTORED\r\n", "DELETED\r\n"]);
        await sql.unsafe(`DROP TRIGGER hold_${queue} ON ${schema}.mcq_counters`);
      };
      // q: b has a counter row already (its set before), which its sets update.
      expect(await b.call(set("q", "old"))).toBe("STORED\r\n");
      expect(await queueStats(a, "q")).toMatchObject({ items: 1 });
      await race("q");
      // Before: q held new1 and new2 with no counter rows (stats: none; a get then made items -1).
      expect(await tables(sql, schema)).toEqual([]);
      // p: b's first set into it makes its counter row (a has one).
      expect(await a.call(set("p", "a0"))).toBe("STORED\r\n");
      await race("p");
      expect(await tables(sql, schema)).toEqual([]);
      for (const c of [a, b]) expect(await c.call("stats queue q\r\nstats queue p\r\nget q\r\nget p\r\n")).toBe("END\r\n".repeat(4));
      // The queues work on after it: counters exact.
      expect(await b.call(set("q", "after") + set("p", "after"))).toBe("STORED\r\n".repeat(2));
      expect(await a.call("get q\r\n")).toBe(value("q", "after") + "END\r\n");
      expect(await tables(sql, schema)).toEqual([
        { queue: "p", n: 1, items: 1, open: 0, owned: 0, delayed: 0, waiting: 0 },
        { queue: "q", n: 0, items: 0, open: 0, owned: 0, delayed: 0, waiting: 0 },
      ]);
      for (const c of [a, b]) expect(await queueStats(c, "q")).toMatchObject({ items: 0, total: 1, fetched: 1 });
      await Promise.all([sql.close(), holder.close()]);
      await Promise.all(nodes.map((n) => n.kill()));
    });
  });
}
