/**
 * How `mcq dump --store` sizes what it fetches (review 7 F5): bodies come in runs whose summed
 * length stays under the budget, decided from their lengths before any is fetched; a body larger
 * than the budget comes alone.
 */
import { expect, test } from "bun:test";
import { runsByBytes } from "../../src/tools/dump-postgres";

const MIB = 1 << 20;

test("small bodies then 1 MiB ones: runs of at most the budget, each large body counted before it is fetched", () => {
  const lens = [...Array(200).fill(10), ...Array(300).fill(MIB)];
  const ends = runsByBytes(lens, 4 * MIB);
  let start = 0;
  for (const end of ends) {
    expect(lens.slice(start, end).reduce((a, b) => a + b, 0)).toBeLessThanOrEqual(4 * MIB);
    start = end;
  }
  expect(start).toBe(lens.length);
  // The 200 small ones and 3 large ones, then 4 large ones a run: 1 + 297 / 4 runs.
  expect(ends.slice(0, 3)).toEqual([203, 207, 211]);
  expect(ends.length).toBe(1 + Math.ceil(297 / 4));
});

test("a body larger than the budget is a run of its own; empty bodies and no rows", () => {
  expect(runsByBytes([5, 100, 5, 5], 10)).toEqual([1, 2, 4]);
  expect(runsByBytes([100], 10)).toEqual([1]);
  expect(runsByBytes([0, 0, 0], 10)).toEqual([3]);
  expect(runsByBytes([], 10)).toEqual([]);
  expect(runsByBytes([10, 10], 10)).toEqual([1, 2]);
});
