/**
 * /metrics and /stats.json over the memory store: the --metrics-queues deepest queues get series
 * of their own, the rest add up to one "(other queues)" entry, and the text is the same however
 * many turns it was built in.
 */
import { expect, test } from "bun:test";
import { DEFAULTS } from "../../src/config";
import { createWaiters, type Context } from "../../src/context";
import { json, OTHER_QUEUES, prometheus, snapshot } from "../../src/metrics";
import type { TurnClock } from "../../src/slices";
import { createStats } from "../../src/stats";
import { createMemoryStore } from "../../src/store/memory";

const T = Date.UTC(2026, 0, 1);

function context(metricsQueues: number): Context {
  const store = createMemoryStore();
  const put = (q: string, n: number, at = T) => {
    for (let i = 0; i < n; i++) store.enqueue(q, 0, Buffer.from("abcd"), 0, at);
  };
  put("b", 3, T - 2000);
  put("a", 3, T - 1000);
  put("c", 1);
  put("d", 2);
  put("e", 1);
  store.dequeue("e", T);
  store.open("d", T);
  store.commit();
  const waiters = createWaiters();
  for (const q of ["a", "e", "not-yet"]) waiters.add(q, {} as never);
  const ctx = { store, stats: createStats(), config: { ...DEFAULTS, home: "/nonexistent", metricsQueues }, waiters };
  return { ...ctx, now: () => T, startedAt: T, version: "1.0.0" } as unknown as Context;
}

/** A clock that ends the turn at every step: the most slices a listing can be cut into. */
const everyStep = (): TurnClock => ({ over: () => true, next: () => new Promise((r) => setImmediate(r)) });

test("the deepest queues are listed, ties by name, and the others are summed", async () => {
  const s = await snapshot(context(2));
  expect(s.queues).toEqual([
    { name: "a", depth: 3, bytes: 12, total: 3, fetched: 0, open: 0, delayed: 0, deadLettered: 0, oldestAgeSeconds: 1, waiters: 1 },
    { name: "b", depth: 3, bytes: 12, total: 3, fetched: 0, open: 0, delayed: 0, deadLettered: 0, oldestAgeSeconds: 2, waiters: 0 },
  ]);
  // c, d and e; the waiter on a queue that does not exist yet counts among them too.
  expect(s.otherQueues).toEqual({ count: 3, depth: 3, bytes: 12, total: 4, fetched: 1, open: 1, delayed: 0, deadLettered: 0, waiters: 2 });
  expect(s.queueCount).toBe(5);
  const none = await snapshot(context(0));
  expect([none.queues, none.otherQueues]).toEqual([[], { count: 5, depth: 9, bytes: 36, total: 10, fetched: 1, open: 1, delayed: 0, deadLettered: 0, waiters: 3 }]);
});

test("/metrics: a series per listed queue, one for the rest, the same text in one turn or many", async () => {
  const s = await snapshot(context(2));
  const text = await new Response(await prometheus(s)).text();
  const depth = text.split("\n").filter((l) => l.startsWith("mcq_queue_depth{"));
  expect(depth).toEqual(['mcq_queue_depth{queue="a"} 3', 'mcq_queue_depth{queue="b"} 3', `mcq_queue_depth{queue="${OTHER_QUEUES}"} 3`]);
  expect(text).toContain(`\nmcq_queue_waiters{queue="${OTHER_QUEUES}"} 2\n`);
  expect(text).toContain("\nmcq_queues 5\n");
  expect(text).toContain("\nmcq_queues_other 3\n");
  expect(text).not.toContain(`mcq_queue_oldest_age_seconds{queue="${OTHER_QUEUES}"}`);
  expect(await new Response(await prometheus(s, everyStep())).text()).toBe(text);
  if (Bun.which("promtool") !== null) {
    const check = Bun.spawnSync(["promtool", "check", "metrics"], { stdin: Buffer.from(text) });
    expect(check.stdout.toString() + check.stderr.toString()).toBe("");
  }
});

test("/stats.json is the snapshot, in one turn or many", async () => {
  const s = await snapshot(context(2), everyStep());
  expect(JSON.parse(await new Response(await json(s)).text())).toEqual(JSON.parse(JSON.stringify(s)));
  expect(await new Response(await json(s, everyStep())).text()).toBe(await new Response(await json(s)).text());
});
