/**
 * The delay and dedup parts of the store contract (store.contract.ts) for a store whose clock is
 * its database's (Postgres): due times and windows are measured there, so these take real, short
 * delays, and a delayed message shows up by itself once due. The test waits for the store's own
 * notice (onAvailable), not for a guessed time.
 */
import { expect, test } from "bun:test";
import type { Message, QueueStore } from "../../src/store/store";

const enc = (s: string) => Buffer.from(s);
const text = (m: { body: Uint8Array } | null) => (m === null ? null : Buffer.from(m.body).toString());
const T = 1_000_000; // the callers' `now`: the store must not use it for due times

/** Each call: a promise for the store's next notice that messages may be available. */
function notices(s: QueueStore): () => Promise<void> {
  let waiting: (() => void)[] = [];
  s.onAvailable = () => {
    const w = waiting;
    waiting = [];
    for (const f of w) f();
  };
  return () => new Promise<void>((r) => waiting.push(r));
}

/**
 * Peeks until `queue` shows a message, looking again at each notice; returns it. (Once a second
 * also without one: a notice sent before the store's LISTEN was up is not delivered.)
 */
async function untilVisible(s: QueueStore, next: () => Promise<void>, queue: string): Promise<Message> {
  for (;;) {
    const notice = next(); // asked for before looking, so none is missed
    const m = await s.peek(queue, T);
    await s.commit();
    if (m !== null) return m;
    await Promise.race([notice, Bun.sleep(1000)]);
  }
}

export function databaseClockFeatures(make: () => QueueStore | Promise<QueueStore>): void {
  test("delays (database clock): hidden until due, then at the tail by due time, then arrival; shown by the store itself", async () => {
    const s = await make();
    const d = s.delays!;
    const next = notices(s);
    s.enqueue("q", 0, enc("a"), 0, T);
    d.enqueue("q", 0, enc("late"), 0, T, T + 400);
    d.enqueue("q", 0, enc("early"), 0, T, T + 200);
    d.enqueue("q", 0, enc("early too"), 0, T, T + 200);
    s.enqueue("q", 0, enc("b"), 0, T);
    const start = Date.now();
    await s.commit();
    expect(s.detail("q", T)).toMatchObject({ items: 5, delayed: 3, total: 5 });
    expect([await s.dequeue("q", T), await s.dequeue("q", T), await s.dequeue("q", T), await s.open("q", T)].map(text)).toEqual(["a", "b", null, null]);
    await s.commit();
    expect(text(await untilVisible(s, next, "q"))).toBe("early");
    expect(Date.now() - start).toBeGreaterThanOrEqual(190); // never early
    s.enqueue("q", 0, enc("c"), 0, T); // set after they were due: behind them
    await s.commit();
    expect([await s.dequeue("q", T), await s.dequeue("q", T), await s.dequeue("q", T), await s.dequeue("q", T)].map(text)).toEqual(["early", "early too", "c", null]);
    await s.commit();
    expect(text(await untilVisible(s, next, "q"))).toBe("late");
    expect(Date.now() - start).toBeGreaterThanOrEqual(390);
    expect(text(await s.dequeue("q", T))).toBe("late");
    await s.commit();
    await s.refresh?.();
    expect(s.detail("q", T)).toMatchObject({ items: 0, delayed: 0, total: 6, fetched: 6 });
    await s.close();
  });

  test("release with a delay (database clock): hidden until due, back at the tail; a rollback undoes it", async () => {
    const s = await make();
    const d = s.delays!;
    const next = notices(s);
    s.enqueue("q", 0, enc("m1"), 0, T);
    s.enqueue("q", 0, enc("m2"), 0, T);
    await s.commit();
    const m1 = (await s.open("q", T))!;
    await s.commit();
    expect(d.release("q", m1.id, T + 150, T)).toBe(true);
    s.rollback(); // still open
    expect(d.release("q", m1.id, T + 150, T)).toBe(true);
    expect(d.release("q", m1.id, T + 150, T)).toBe(false); // no longer open
    await s.commit();
    expect(s.detail("q", T)).toMatchObject({ items: 2, open: 0, delayed: 1 });
    expect(text(await s.dequeue("q", T))).toBe("m2");
    expect(await s.dequeue("q", T)).toBeNull();
    await s.commit();
    expect(text(await untilVisible(s, next, "q"))).toBe("m1");
    await s.refresh?.();
    expect(s.detail("q", T)).toMatchObject({ items: 1, open: 0, delayed: 0 });
    await s.close();
  });

  test("dedup (database clock): a token turns sets away within its window, in the batch and after it; a rollback forgets it", async () => {
    const s = await make();
    const d = s.dedup!;
    const set = (body: string, token: string, windowMs: number) => {
      if (d.seen("q", token, T)) return;
      s.enqueue("q", 0, enc(body), 0, T);
      d.remember("q", token, T + windowMs);
    };
    set("m", "tok", 60_000);
    set("again in the batch", "tok", 60_000);
    await s.commit();
    set("again later", "tok", 60_000); // Postgres turns it away
    set("short", "short", 100);
    await s.commit();
    expect(s.detail("q", T)).toMatchObject({ items: 2, total: 2, deduplicated: 2 });
    set("gone", "gone", 60_000);
    s.rollback();
    set("gone again", "gone", 60_000); // the rolled back token was never there
    await s.commit();
    await Bun.sleep(120); // the window of "short" ends
    set("short again", "short", 100);
    await s.commit();
    const got: (string | null)[] = [];
    for (let i = 0; i < 5; i++) got.push(text(await s.dequeue("q", T)));
    expect(got).toEqual(["m", "short", "gone again", "short again", null]);
    await s.commit();
    expect(d.sweep(T, 10)).toBe(0);
    await s.close();
  });
}
