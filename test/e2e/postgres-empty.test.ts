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
  });
}
