/** Per-queue settings and policies (queue-config.ts, queue-limits.ts) over the memory store. */
import { expect, test } from "bun:test";
import type { Context } from "../../src/context";
import { createQueueSettings, parseQueueTables } from "../../src/queue-config";
import { createQueueLimits } from "../../src/queue-limits";
import { createMemoryStore } from "../../src/store/memory";

const T = 1_000_000;

test("the longest literal prefix wins, then the first in the file; * matches . and +", () => {
  const rules = parseQueueTables({ "a.*": { max_items: 1 }, "a.b*": { max_items: 2 }, "a.b*z": { max_items: 3 }, "*": { max_bytes: 9 } });
  const table = createQueueSettings({ maxItems: 0, maxBytes: 0, discardOld: false, maxDeliveries: 0, dlq: null, fanout: false }, rules);
  expect([table.of("a.x").maxItems, table.of("a.bz").maxItems, table.of("a.b+c").maxItems, table.of("zzz").maxBytes]).toEqual([1, 2, 2, 9]);
  expect(table.of("zzz").maxItems).toBe(0);
  expect(table.limited).toBe(true);
});

test("a queue whose <q>.dlq would pass 250 bytes keeps its message and counts it as skipped", () => {
  const store = createMemoryStore();
  const ctx = { store, now: () => T } as unknown as Context;
  const limits = createQueueLimits({ maxItems: 0, maxBytes: 0, maxDeliveries: 1, queueRules: [] });
  for (const name of ["x".repeat(247), "x".repeat(246)]) {
    store.enqueue(name, 0, Buffer.from("m"), 0, T);
    const m = store.open(name, T)!;
    const target = limits.deadLetter(ctx, name, m.id);
    expect([target, limits.deadLettered(name), limits.deadLetterSkipped(name)]).toEqual(
      name.length === 247 ? [null, 0, 1] : [`${name}.dlq`, 1, 0],
    );
  }
  expect(store.detail("x".repeat(247), T)).toMatchObject({ items: 1, open: 1 });
  expect(store.detail(`${"x".repeat(246)}.dlq`, T)).toMatchObject({ items: 1, open: 0 });
});
