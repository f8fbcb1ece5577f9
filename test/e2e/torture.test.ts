/**
 * The short form of the crash torture (scripts/torture.ts): 3 kill -9 in each sync mode while
 * 8 producers, 8 reliable consumers (/close/open) and 4 plain-get consumers run.
 * `bun run torture` is the long form (10 kills).
 */
import { expect, test } from "bun:test";
import { torture, unexplainedLosses } from "../../scripts/torture";

for (const sync of ["full", "normal"] as const) {
  test(`kill -9 three times under load, --sync ${sync}: nothing acknowledged is lost or repeated`, async () => {
    const report = await torture({ kills: 3, sync });
    console.log(JSON.stringify(report));
    expect(report.acknowledged).toBeGreaterThan(100);
    expect(report.plainDelivered).toBeGreaterThan(0);
    expect(report.delivered).toBeGreaterThanOrEqual(report.acknowledged - report.lost);
    expect(report.lost).toBeLessThanOrEqual(report.takenUnseen);
    expect(report.takenUnseen).toBeGreaterThanOrEqual(0);
    expect(report.takenUnseen).toBeLessThanOrEqual(report.inFlightAtKill);
    expect({
      unexplainedLost: report.unexplainedLost,
      duplicates: report.duplicates,
      outOfOrder: report.outOfOrder,
      unknown: report.unknown,
      queuedAtEnd: report.queuedAtEnd,
    }).toEqual({ unexplainedLost: 0, duplicates: 0, outOfOrder: 0, unknown: 0, queuedAtEnd: 0 });
  }, 120_000);
}

test("the loss rule: each lost message needs its own cut plain get, at a kill no earlier than its set", () => {
  expect(unexplainedLosses([], [])).toBe(0);
  expect(unexplainedLosses([], [2, 0, 1])).toBe(0);
  // A message set to life 0 may be taken at kill 0 or later; one set to life 2, only at kill 2.
  expect(unexplainedLosses([0, 0], [1, 1])).toBe(0);
  expect(unexplainedLosses([0, 0, 0], [1, 1])).toBe(1);
  expect(unexplainedLosses([2], [3, 3])).toBe(1);
  expect(unexplainedLosses([1, 1], [5, 1])).toBe(1);
  // No kill after the last life: nothing lost in it can be explained.
  expect(unexplainedLosses([3], [1, 1, 1])).toBe(1);
  expect(unexplainedLosses([0, 1, 2], [0, 0, 3])).toBe(0);
});
