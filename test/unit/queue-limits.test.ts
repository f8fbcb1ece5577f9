/** Per-queue settings and policies (queue-config.ts, queue-limits.ts) over the memory store. */
import { expect, test } from "bun:test";
import type { Context } from "../../src/context";
import { createQueueSettings, parseQueueTables } from "../../src/queue-config";
import { createQueueLimits } from "../../src/queue-limits";
import { createMemoryStore } from "../../src/store/memory";

const T = 1_000_000;
const GLOBALS = { maxItems: 0, maxBytes: 0, discardOld: false, maxDeliveries: 0, dlq: null, fanout: false, openTimeoutMs: 0, expiry: false, lifetimeS: 0 };

test("the longest literal prefix wins, then the first in the file; * matches . and +", () => {
  const rules = parseQueueTables({ "a.*": { max_items: 1 }, "a.b*": { max_items: 2 }, "a.b*z": { max_items: 3 }, "*": { max_bytes: 9 } });
  const table = createQueueSettings({ ...GLOBALS }, rules);
  expect([table.of("a.x").maxItems, table.of("a.bz").maxItems, table.of("a.b+c").maxItems, table.of("zzz").maxBytes]).toEqual([1, 2, 2, 9]);
  expect(table.of("zzz").maxItems).toBe(0);
  expect(table.limited).toBe(true);
});

test("a queue whose <q>.dlq would pass 250 bytes keeps its message and counts it as skipped", () => {
  const store = createMemoryStore();
  const ctx = { store, now: () => T } as unknown as Context;
  const limits = createQueueLimits({ maxItems: 0, maxBytes: 0, maxDeliveries: 1, openTimeoutMs: 0, expiry: false, queueRules: [] });
  for (const name of ["x".repeat(247), "x".repeat(246)]) {
    store.enqueue(name, 0, Buffer.from("m"), 0, T);
    const m = store.open(name, T)!;
    const target = limits.deadLetter(ctx, name, m.id);
    // The memory store keeps the counters (countFeature), in the batch.
    const { deadLettered, deadLetterSkipped } = store.detail(name, T)!.features!;
    expect([target, deadLettered, deadLetterSkipped]).toEqual(
      name.length === 247 ? [null, 0, 1] : [`${name}.dlq`, 1, 0],
    );
  }
  expect(store.detail("x".repeat(247), T)).toMatchObject({ items: 1, open: 1 });
  expect(store.detail(`${"x".repeat(246)}.dlq`, T)).toMatchObject({ items: 1, open: 0 });
});

test("open_timeout and expiry: the table's value over the global one; bad values name the key", () => {
  const rules = parseQueueTables({
    "fast.*": { open_timeout: 100, expiry: 60 }, "keep.*": { expiry: false, open_timeout: 0 }, "raw.*": { expiry: true },
  });
  const table = createQueueSettings({ ...GLOBALS, openTimeoutMs: 5000, expiry: true }, rules);
  const pick = (q: string) => { const s = table.of(q); return [s.openTimeoutMs, s.expiry, s.lifetimeS]; };
  expect([pick("fast.a"), pick("keep.a"), pick("raw.a"), pick("other")]).toEqual([[100, true, 60], [0, false, 0], [5000, true, 0], [5000, true, 0]]);
  expect([table.leases, table.expiring]).toEqual([true, true]);
  const none = createQueueSettings({ ...GLOBALS }, parseQueueTables({ "q*": { expiry: false, open_timeout: 0 } }));
  expect([none.leases, none.expiring]).toEqual([false, false]);
  const bad: [Record<string, unknown>, string][] = [
    [{ open_timeout: -1 }, "open_timeout must be a whole number from 0 (no lease) to 2147483647"],
    [{ open_timeout: 2147483648 }, "open_timeout must be a whole number from 0 (no lease) to 2147483647"],
    [{ open_timeout: "5s" }, "open_timeout must be a whole number from 0 (no lease) to 2147483647"],
    [{ open_timeout: 1.5 }, "open_timeout must be a whole number from 0 (no lease) to 2147483647"],
    [{ expiry: 0 }, "expiry must be true, false, or a lifetime in seconds from 1 to 2592000"],
    [{ expiry: -5 }, "expiry must be true, false, or a lifetime in seconds from 1 to 2592000"],
    [{ expiry: 2592001 }, "expiry must be true, false, or a lifetime in seconds from 1 to 2592000"],
    [{ expiry: "1h" }, "expiry must be true, false, or a lifetime in seconds from 1 to 2592000"],
  ];
  for (const [table, message] of bad) expect(() => parseQueueTables({ "q*": table })).toThrow(`[queues."q*"]: ${message}`);
});
