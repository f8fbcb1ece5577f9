/**
 * The short form of the multi-node crash torture (scripts/torture-nodes.ts): 3 mcq nodes on one
 * Postgres schema, producers and reliable consumers (/close/open) spread over them, 3 kill -9 of
 * random nodes. `bun scripts/torture-nodes.ts --store …` is the long form (10 kills).
 */
import { afterAll, expect, test } from "bun:test";
import { tortureNodes } from "../../scripts/torture-nodes";
import { dropSchemas, freshSchema, havePostgres, pgStoreUrl } from "../pg";

if (havePostgres("postgres-torture")) {
  const schema = freshSchema("torture");
  afterAll(() => dropSchemas([schema]));

  test("3 nodes on one Postgres, kill -9 of random nodes: nothing acknowledged lost or confirmed twice, counters exact", async () => {
    const report = await tortureNodes({ store: pgStoreUrl(schema), kills: 3 });
    console.log(`multi-node torture: ${JSON.stringify(report)}`); // its time is in the report (seconds)
    expect(report.acknowledged).toBeGreaterThan(100);
    expect(report.delivered).toBeGreaterThanOrEqual(report.acknowledged);
    expect({ lost: report.lost, duplicates: report.duplicates, unknown: report.unknown, queued: report.queuedAtEnd, open: report.openAtEnd })
      .toEqual({ lost: 0, duplicates: 0, unknown: 0, queued: 0, open: 0 });
    // Every message stored was delivered in the end, and each was confirmed once: the sums over nodes say so exactly.
    expect({ total: report.total, fetched: report.fetched }).toEqual({ total: report.delivered, fetched: report.delivered });
  }, 120_000);
}
