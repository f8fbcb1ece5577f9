/**
 * The store-failure log (src/failure-log.ts): one ERROR per outage, a count once a minute while it
 * lasts, and the count when a batch commits again, on an injected clock.
 */
import { expect, test } from "bun:test";
import { createFailureLog } from "../../src/failure-log";
import { StoreError } from "../../src/store/store";
import type { Logger } from "../../src/log";

function logger() {
  const lines: string[] = [];
  const log = {
    error: (m: string) => void lines.push(`ERROR ${m}`),
    debug: (m: string) => void lines.push(`DEBUG ${m}`),
  } as unknown as Logger;
  return { lines, log, errors: () => lines.filter((l) => l.startsWith("ERROR")) };
}

test("a hung store failing one batch every 5 s is one outage: one ERROR, a count each minute, the total once a batch commits (review 10a L1)", () => {
  let t = 1_000_000;
  const { log, errors } = logger();
  const f = createFailureLog(log, () => t);
  for (let i = 0; i < 25; i++, t += 5000) f.failed(new StoreError(`Postgres: no answer within 5000 ms (${i})`));
  expect(errors()).toEqual([
    "ERROR store failure, batch undone: Postgres: no answer within 5000 ms (0)",
    "ERROR store failures go on: 12 more batches undone in the 60.0 s since the first (the last: Postgres: no answer within 5000 ms (12))",
    "ERROR store failures go on: 24 more batches undone in the 120.0 s since the first (the last: Postgres: no answer within 5000 ms (24))",
  ]);
  f.committed();
  expect(errors().at(-1)).toBe("ERROR store failures: 24 more batches undone in the 125.0 s after the first (the last: Postgres: no answer within 5000 ms (24))");
  f.committed();
  expect(errors().length).toBe(4);
  f.failed(new StoreError("disk full"));
  expect(errors().at(-1)).toBe("ERROR store failure, batch undone: disk full");
});

test("one failure then a commit: the ERROR alone, no count line", () => {
  const { log, lines } = logger();
  const f = createFailureLog(log, () => 0);
  f.failed(new StoreError("disk full"));
  f.committed();
  expect(lines).toEqual(["ERROR store failure, batch undone: disk full"]);
});
