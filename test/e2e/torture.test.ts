/**
 * The short form of the crash torture (scripts/torture.ts): 3 kill -9 in each sync mode while
 * 8 producers and 4 consumers run. `bun run torture` is the long form (10 kills).
 */
import { expect, test } from "bun:test";
import { torture } from "../../scripts/torture";

for (const sync of ["full", "normal"] as const) {
  test(`kill -9 three times under load, --sync ${sync}: nothing acknowledged is lost or repeated`, async () => {
    const report = await torture({ kills: 3, sync });
    expect(report.acknowledged).toBeGreaterThan(100);
    expect(report.delivered).toBeGreaterThanOrEqual(report.acknowledged);
    expect({ lost: report.lost, duplicates: report.duplicates, outOfOrder: report.outOfOrder, unknown: report.unknown })
      .toEqual({ lost: 0, duplicates: 0, outOfOrder: 0, unknown: 0 });
  }, 120_000);
}
