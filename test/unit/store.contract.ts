/**
 * One behaviour, two stores: every QueueStore implementation runs this suite (Hono's shared
 * router suite). A store-specific file adds what only it can show (reopening a file).
 */
import { describe, expect, test } from "bun:test";
import type { FeatureCounter, QueueStore } from "../../src/store/store";
import { databaseClockFeatures } from "./store.contract-db";

const enc = (s: string) => Buffer.from(s);
const text = (m: { body: Uint8Array } | null) => (m === null ? null : Buffer.from(m.body).toString());

/**
 * What a store may do differently: a networked store (Postgres) numbers messages when it writes
 * them, counts what a sweep removed when the database answers, and knows the oldest message's
 * age from its last reading of the head rather than at every take.
 */
export interface StoreTraits {
  /** enqueue() returns the message's id (else 0: the id is known once it is taken). */
  idsAtEnqueue: boolean;
  /** sweepExpired() returns the count at once, and a take deletes expired messages on its way. */
  syncSweep: boolean;
  /** detail()'s oldest age follows every take at once. */
  exactOldest: boolean;
  /**
   * Whose clock expiry follows: the caller's `now` (one node's store), or the database's, shared
   * by every node (Postgres): a set's expiry is a time to live from its `now`, and takes and
   * sweeps ignore theirs.
   */
  clock?: "caller" | "database";
  /**
   * A take is answered once its batch is sent, at commit (Postgres: no transaction stays open
   * while a caller waits): make() gives a store whose takes commit the batch, and nothing can be
   * rolled back after a take.
   */
  takesAtCommit?: boolean;
  /**
   * Feature counters that the store's own verbs count where they know the outcome (Postgres: a
   * dead-letter move, a discard_old drop, a set a token turns away): countFeature leaves them.
   */
  countedByVerbs?: FeatureCounter[];
}

const LOCAL: StoreTraits = { idsAtEnqueue: true, syncSweep: true, exactOldest: true };

export function storeContract(name: string, make: () => QueueStore | Promise<QueueStore>, traits: StoreTraits = LOCAL): void {
  describe(`${name} store contract`, () => {
    const T = 1_000_000;
    // Delays and dedup windows on the caller's clock; a database's clock: store.contract-db.ts.
    const callerTest: typeof test = traits.clock === "database" ? ((() => {}) as unknown as typeof test) : test;
    if (traits.clock === "database") databaseClockFeatures(make);

    test("FIFO per queue, ids increase, unknown queues are empty", async () => {
      const s = await make();
      const a = s.enqueue("a", 1, enc("a1"), 0, T);
      s.enqueue("b", 2, enc("b1"), 0, T);
      const a2 = s.enqueue("a", 3, enc("a2"), 0, T);
      await s.commit();
      if (traits.idsAtEnqueue) expect(a2).toBeGreaterThan(a);
      const first = await s.dequeue("a", T);
      expect(first).toEqual({ id: traits.idsAtEnqueue ? a : expect.any(Number), flags: 1, expires: 0, body: expect.anything() });
      const second = await s.dequeue("a", T);
      expect(text(second)).toBe("a2");
      expect(second!.id).toBeGreaterThan(first!.id);
      expect(await s.dequeue("a", T)).toBeNull();
      expect(await s.dequeue("nope", T)).toBeNull();
      expect(text(await s.dequeue("b", T))).toBe("b1");
      await s.commit();
      expect(s.list()).toEqual([{ name: "a", total: 2, fetched: 2 }, { name: "b", total: 1, fetched: 1 }]);
      await s.close();
    });

    test("peek leaves the message; open hides it until confirm or release", async () => {
      const s = await make();
      s.enqueue("q", 0, enc("m1"), 0, T);
      s.enqueue("q", 0, enc("m2"), 0, T);
      expect(text(await s.peek("q", T))).toBe("m1");
      const open = (await s.open("q", T))!;
      expect(text(open)).toBe("m1");
      expect(text(await s.peek("q", T))).toBe("m2");
      expect(s.detail("q", T)).toMatchObject({ items: 2, open: 1, total: 2, fetched: 0 });
      expect(s.release("q", open.id)).toBe(true);
      expect(s.release("q", open.id)).toBe(false);
      expect(text(await s.peek("q", T))).toBe("m1");
      const again = (await s.open("q", T))!;
      expect(again.id).toBe(open.id);
      expect(s.confirm("q", again.id)).toBe(true);
      expect(s.confirm("q", again.id)).toBe(false);
      expect(s.detail("q", T)).toMatchObject({ items: 1, bytes: 2, open: 0, total: 2, fetched: 1 });
      await s.commit();
      await s.close();
    });

    test("drop deletes the queue, flush empties it and keeps its counters", async () => {
      const s = await make();
      s.enqueue("d", 0, enc("x"), 0, T);
      s.enqueue("f", 0, enc("y"), 0, T);
      s.enqueue("g", 0, enc("z"), 0, T);
      // A store shared by nodes answers a drop from its statement, once the batch is sent (Postgres).
      const dropped = [s.drop("d"), s.drop("d")];
      s.flush("f");
      expect(await s.dequeue("f", T)).toBeNull();
      expect(s.list().map((q) => q.name)).toEqual(["f", "g"]);
      s.flushAll();
      expect(await s.dequeue("g", T)).toBeNull();
      expect(s.totals()).toMatchObject({ queues: 2, items: 0 });
      expect(s.list()).toEqual([{ name: "f", total: 1, fetched: 0 }, { name: "g", total: 1, fetched: 0 }]);
      await s.commit();
      expect(await Promise.all(dropped)).toEqual([true, false]);
      await s.close();
    });

    test("a queue dropped and set again before any listing is listed once, anew", async () => {
      const s = await make();
      s.enqueue("x", 0, enc("1"), 0, T);
      s.enqueue("w", 0, enc("1"), 0, T);
      const dropped = s.drop("x");
      s.enqueue("x", 0, enc("2"), 0, T);
      expect(s.list()).toEqual([{ name: "w", total: 1, fetched: 0 }, { name: "x", total: 1, fetched: 0 }]);
      expect([...s.summaries()].map((q) => q.name)).toEqual(["w", "x"]);
      await s.commit();
      expect(await dropped).toBe(true);
      await s.close();
    });

    test("list is sorted by byte order", async () => {
      const s = await make();
      for (const n of ["b", "B", "a10", "a9", "_", "~"]) s.enqueue(n, 0, enc(""), 0, T);
      expect(s.list().map((q) => q.name)).toEqual(["B", "_", "a10", "a9", "b", "~"]);
      await s.commit();
      await s.close();
    });

    test("detail reports items, bytes and the oldest message's age", async () => {
      const s = await make();
      s.enqueue("q", 0, enc("abc"), 0, T);
      s.enqueue("q", 0, enc("hello"), 0, T + 50);
      expect(s.detail("q", T + 200)).toMatchObject({ name: "q", items: 2, bytes: 8, total: 2, fetched: 0, open: 0, oldestAgeMs: 200 });
      expect(s.detail("none", T)).toBeNull();
      await s.commit();
      await s.close();
    });

    test.if(traits.exactOldest)("detail's oldest age counts open messages and messages set in this batch", async () => {
      const s = await make();
      s.enqueue("q", 0, enc("a"), 0, T);
      s.enqueue("q", 0, enc("b"), 0, T + 10);
      await s.commit();
      s.enqueue("q", 0, enc("c"), 0, T + 20);
      const a = (await s.open("q", T + 30))!;
      expect(s.detail("q", T + 100)).toMatchObject({ items: 3, open: 1, oldestAgeMs: 100 });
      expect(text(await s.dequeue("q", T + 30))).toBe("b");
      expect(s.confirm("q", a.id)).toBe(true);
      expect(s.detail("q", T + 100)).toMatchObject({ items: 1, open: 0, oldestAgeMs: 80 });
      await s.commit();
      expect(s.detail("q", T + 100)).toMatchObject({ items: 1, open: 0, oldestAgeMs: 80 });
      expect(text(await s.dequeue("q", T + 30))).toBe("c");
      expect(s.detail("q", T + 100)).toMatchObject({ items: 0, oldestAgeMs: 0 });
      await s.commit();
      await s.close();
    });

    test("summaries: every queue once, by name, while queues come and go between steps", async () => {
      const s = await make();
      for (const n of ["c", "a", "e"]) s.enqueue(n, 0, enc("xy"), 0, T);
      await s.open("a", T);
      await s.commit();
      const it = s.summaries();
      expect(it.next().value).toMatchObject({ name: "a", total: 1, fetched: 0, items: 1, bytes: 2, open: 1 });
      s.enqueue("_", 0, enc(""), 0, T); // before the cursor: not seen
      s.enqueue("b", 0, enc(""), 0, T); // after it: seen
      const dropped = [s.drop("a"), s.drop("e")];
      expect(it.next().value).toMatchObject({ name: "b" });
      s.enqueue("a", 0, enc(""), 0, T); // back, behind the cursor
      expect([...it].map((q) => q.name)).toEqual(["c"]);
      s.rollback();
      expect([...s.summaries()].map((q) => q.name)).toEqual(["a", "c", "e"]);
      // Answered at once, or (a drop answered by its statement) failed with the batch it was in.
      for (const d of dropped) if (d instanceof Promise) expect(d).rejects.toThrow("batch undone");
      else expect(d).toBe(true);
      const again = s.summaries();
      expect(again.next().value).toMatchObject({ name: "a" });
      s.enqueue("d", 0, enc(""), 0, T);
      s.rollback(); // the SQLite store reloads its queues
      expect([...again].map((q) => q.name)).toEqual(["c", "e"]);
      await s.close();
    });

    test("expired messages are never handed out, and are counted", async () => {
      const s = await make();
      if (traits.clock === "database") {
        // Time to live 400 ms on the database's clock; the caller's clock, far off, changes nothing.
        const start = Date.now();
        s.enqueue("e", 0, enc("old"), T + 400, T);
        s.enqueue("e", 0, enc("new"), 0, T);
        s.enqueue("e", 0, enc("later"), T + 400, T);
        expect(text(await s.peek("e", T + 1e9))).toBe("old");
        await s.commit();
        await Bun.sleep(Math.max(0, start + 500 - Date.now())); // the time to live passing is the point
        expect(text(await s.dequeue("e", 0))).toBe("new");
        s.sweepExpired(0, 100);
        expect(await s.dequeue("e", 0)).toBeNull();
        await s.commit();
        expect(s.totals()).toMatchObject({ items: 0, expired: 2 });
        await s.close();
        return;
      }
      s.enqueue("e", 0, enc("old"), T + 10, T);
      s.enqueue("e", 0, enc("new"), 0, T);
      s.enqueue("e", 0, enc("later"), T + 10, T);
      expect(text(await s.peek("e", T + 5))).toBe("old");
      expect(text(await s.dequeue("e", T + 10))).toBe("new");
      const swept = s.sweepExpired(T + 11, 100);
      if (traits.syncSweep) expect(swept).toBe(1);
      expect(await s.dequeue("e", T + 11)).toBeNull();
      await s.commit();
      expect(s.totals()).toMatchObject({ items: 0, expired: 2 });
      await s.close();
    });

    test("one batch of small and large bodies keeps FIFO, and the store keeps its own copy of each body", async () => {
      const s = await make();
      const large = Buffer.alloc(100 * 1024, 0x6c);
      const input = enc("s1");
      s.enqueue("m", 0, input, 0, T);
      input.write("XX"); // the caller's buffer is reused for the next request
      s.enqueue("m", 0, large, 0, T);
      s.enqueue("m", 0, enc("s2"), 0, T);
      expect(text(await s.dequeue("m", T))).toBe("s1");
      await s.commit();
      expect(Buffer.from((await s.dequeue("m", T))!.body).equals(large)).toBe(true);
      s.enqueue("m", 0, enc("s3"), 0, T);
      expect(text(await s.peek("m", T))).toBe("s2");
      expect(text(await s.dequeue("m", T))).toBe("s2");
      expect(text(await s.dequeue("m", T))).toBe("s3");
      expect(await s.dequeue("m", T)).toBeNull();
      await s.commit();
      expect(s.detail("m", T)).toMatchObject({ items: 0, bytes: 0, total: 4, fetched: 4 });
      await s.close();
    });

    test("rollback undoes the whole batch", async () => {
      const s = await make();
      s.enqueue("r", 0, enc("kept"), 0, T);
      await s.commit();
      expect(s.dirty()).toBe(false);
      s.enqueue("r", 0, enc("undone"), 0, T);
      if (!traits.takesAtCommit) expect(text(await s.dequeue("r", T))).toBe("kept");
      expect(s.dirty()).toBe(true);
      s.rollback();
      expect(s.list()).toEqual([{ name: "r", total: 1, fetched: 0 }]);
      expect(text(await s.dequeue("r", T))).toBe("kept");
      expect(await s.dequeue("r", T)).toBeNull();
      await s.commit();
      await s.close();
    });

    test("restore puts a taken message back at its place, committed or not, and uncounts it", async () => {
      const s = await make();
      for (const b of ["m1", "m2", "m3"]) s.enqueue("q", 0, enc(b), 0, T);
      await s.commit();
      const m1 = (await s.dequeue("q", T))!;
      await s.commit();
      const m2 = (await s.dequeue("q", T))!;
      // m2 in the open batch, m1 committed: both back, in order, before m3.
      s.restore("q", m2, T);
      s.restore("q", m1, T);
      await s.commit();
      expect(s.detail("q", T)).toMatchObject({ items: 3, total: 3, fetched: 0 });
      expect([await s.dequeue("q", T), await s.dequeue("q", T), await s.dequeue("q", T)].map(text)).toEqual(["m1", "m2", "m3"]);
      await s.commit();
      // Its queue deleted meanwhile: the message is stored anew.
      s.enqueue("d", 0, enc("x"), 0, T);
      await s.commit();
      const x = (await s.dequeue("d", T))!;
      s.drop("d");
      await s.commit();
      s.restore("d", x, T);
      await s.commit();
      expect(s.list().find((q) => q.name === "d")).toEqual({ name: "d", total: 1, fetched: 0 });
      expect(text(await s.dequeue("d", T))).toBe("x");
      await s.commit();
      await s.close();
    });

    describe("delays", () => {
      const delayed = (s: QueueStore) => s.detail("q", T)?.delayed;

      callerTest("a delayed message stays hidden until due, then takes its place by due time, then arrival", async () => {
        const s = await make();
        if (s.delays === undefined) return void (await s.close()); // this store has no delays
        const d = s.delays;
        s.enqueue("q", 0, enc("a"), 0, T);
        d.enqueue("q", 0, enc("late"), 0, T, T + 100);
        d.enqueue("q", 0, enc("early"), 0, T, T + 50);
        d.enqueue("q", 0, enc("early too"), 0, T, T + 50);
        s.enqueue("q", 0, enc("b"), 0, T);
        await s.commit();
        expect(s.detail("q", T)).toMatchObject({ items: 5, delayed: 3, total: 5 });
        expect(text(await s.peek("q", T + 49))).toBe("a");
        expect([await s.dequeue("q", T + 49), await s.dequeue("q", T + 49), await s.dequeue("q", T + 49)].map(text)).toEqual(["a", "b", null]);
        expect(await s.open("q", T + 49)).toBeNull();
        await s.commit();
        // Due at T+50; a set at T+60 comes after them.
        s.enqueue("q", 0, enc("c"), 0, T + 60);
        await s.commit();
        expect(delayed(s)).toBe(1);
        const early = (await s.dequeue("q", T + 60))!;
        expect(text(early)).toBe("early");
        expect([await s.dequeue("q", T + 60), await s.dequeue("q", T + 60), await s.dequeue("q", T + 99)].map(text)).toEqual(["early too", "c", null]);
        expect(text(await s.dequeue("q", T + 100))).toBe("late");
        await s.commit();
        expect(s.detail("q", T + 100)).toMatchObject({ items: 0, delayed: 0, total: 6, fetched: 6 });
        await s.close();
      });

      callerTest("release with a delay hides the open message until due; promoteDue names the queues; rollback undoes", async () => {
        const s = await make();
        if (s.delays === undefined) return void (await s.close());
        const d = s.delays;
        s.enqueue("q", 0, enc("m1"), 0, T);
        s.enqueue("q", 0, enc("m2"), 0, T);
        await s.commit();
        const m1 = (await s.open("q", T))!;
        expect(d.release("q", m1.id, T + 100, T)).toBe(true);
        expect(d.release("q", m1.id, T + 100, T)).toBe(false); // no longer open
        await s.commit();
        expect(s.detail("q", T)).toMatchObject({ items: 2, open: 0, delayed: 1 });
        expect(text(await s.peek("q", T + 99))).toBe("m2");
        expect(d.promoteDue(T + 99, 100)).toEqual([]);
        expect(d.promoteDue(T + 100, 100)).toEqual(["q"]);
        s.rollback();
        expect(delayed(s)).toBe(1);
        expect(d.promoteDue(T + 100, 100)).toEqual(["q"]);
        await s.commit();
        expect(delayed(s)).toBe(0);
        const back = (await s.dequeue("q", T + 100))!;
        expect(text(back)).toBe("m2"); // m1 came back after m2, at its due time
        expect(text(await s.dequeue("q", T + 100))).toBe("m1");
        await s.commit();
        await s.close();
      });

      test("flush, drop and flush_all delete delayed messages too", async () => {
        const s = await make();
        if (s.delays === undefined) return void (await s.close());
        const d = s.delays;
        d.enqueue("q", 0, enc("x"), 0, T, T + 10);
        d.enqueue("r", 0, enc("y"), 0, T, T + 10);
        d.enqueue("t", 0, enc("z"), 0, T, T + 10);
        await s.commit();
        s.flush("q");
        s.drop("r");
        await s.commit();
        expect(s.detail("q", T)).toMatchObject({ items: 0, bytes: 0, delayed: 0 });
        expect(s.has("r")).toBe(false);
        expect(await s.dequeue("q", T + 10)).toBeNull();
        s.flushAll();
        await s.commit();
        expect(s.detail("t", T)).toMatchObject({ items: 0, delayed: 0 });
        expect(await s.dequeue("t", T + 10)).toBeNull();
        expect(d.promoteDue(T + 10, 100)).toEqual([]);
        await s.close();
      });
    });

    describe("dedup", () => {
      callerTest("a token is seen within its window, across a commit, and undone by a rollback; sweep forgets ended ones", async () => {
        const s = await make();
        if (s.dedup === undefined) return void (await s.close()); // this store has no idempotent sets
        const d = s.dedup;
        s.enqueue("q", 0, enc("m"), 0, T);
        d.remember("q", "tok", T + 100);
        expect(d.seen("q", "tok", T)).toBe(true); // in the same batch
        await s.commit();
        expect([d.seen("q", "tok", T + 99), d.seen("q", "tok", T + 100), d.seen("r", "tok", T), d.seen("q", "other", T)])
          .toEqual([true, false, false, false]);
        expect(s.detail("q", T)?.deduplicated).toBe(2);
        d.remember("q", "gone", T + 100);
        s.rollback();
        expect(d.seen("q", "gone", T)).toBe(false);
        expect(d.sweep(T + 99, 10)).toBe(0);
        expect(d.sweep(T + 100, 10)).toBe(1);
        await s.commit();
        expect(d.seen("q", "tok", T)).toBe(false);
        await s.close();
      });
    });

    describe("dead letters", () => {
      test("moveOpen moves an open message to another queue's tail; redrive moves waiting ones back in order", async () => {
        const s = await make();
        if (s.deadLetters === undefined) return void (await s.close()); // this store has no dead letters
        const d = s.deadLetters;
        for (const b of ["m1", "m2", "m3"]) s.enqueue("q", 0, enc(b), 0, T);
        s.enqueue("q.dlq", 0, enc("old"), 0, T);
        await s.commit();
        const m1 = (await s.open("q", T))!;
        expect(d.deliveries("q", m1.id)).toBe(1);
        expect(s.release("q", m1.id)).toBe(true);
        const again = (await s.open("q", T))!;
        expect(d.deliveries("q", again.id)).toBe(2);
        expect(d.deliveries("q", 999_999)).toBe(-1);
        expect(d.moveOpen("q", again.id, "q.dlq", T)).toBe(true);
        expect(d.moveOpen("q", again.id, "q.dlq", T)).toBe(false);
        await s.commit();
        expect(s.detail("q", T)).toMatchObject({ items: 2, open: 0, total: 3, fetched: 1 });
        expect(s.detail("q.dlq", T)).toMatchObject({ items: 2, bytes: 5, total: 2 });
        expect(s.rollback()).toBeUndefined();
        // Redrive: the waiting messages of q.dlq go to q's tail, in order; an open one stays.
        const held = (await s.open("q.dlq", T))!;
        expect(text(held)).toBe("old");
        expect(await d.redrive("q.dlq", "q", T)).toBe(1);
        await s.commit();
        expect([await s.dequeue("q", T), await s.dequeue("q", T), await s.dequeue("q", T)].map(text)).toEqual(["m2", "m3", "m1"]);
        const back = (await s.open("q", T))!;
        expect(back).toBeNull();
        expect(s.detail("q.dlq", T)).toMatchObject({ items: 1, open: 1 });
        expect(await d.redrive("nope", "q", T)).toBe(0);
        await s.commit();
        await s.close();
      });
    });

    describe("feature counters", () => {
      test("countFeature counts in the batch: a commit keeps it, a rollback undoes it, a delete forgets it", async () => {
        const s = await make();
        if (s.countFeature === undefined) return void (await s.close()); // this store leaves them to the server
        const count = s.countFeature.bind(s);
        s.enqueue("q", 0, enc("m"), 0, T);
        await s.commit();
        count("q", "discarded");
        count("q", "deadLettered");
        count("q", "deadLettered");
        count("q", "fanoutRefused");
        count("q", "deadLetterSkipped");
        count("nope", "discarded"); // no queue: nothing, and no queue made
        await s.commit();
        const byVerbs = new Set(traits.countedByVerbs ?? []);
        const counted = { deduplicated: 0, discarded: byVerbs.has("discarded") ? 0 : 1, deadLettered: byVerbs.has("deadLettered") ? 0 : 2, deadLetterSkipped: 1, fanoutRefused: 1 };
        expect(s.detail("q", T)?.features).toEqual(counted);
        expect([...s.summaries()].find((q) => q.name === "q")?.features).toEqual(counted);
        expect(s.has("nope")).toBe(false);
        count("q", "fanoutRefused");
        expect(s.dirty()).toBe(true);
        s.rollback();
        expect(s.detail("q", T)?.features).toEqual(counted);
        s.flush("q"); // a flush keeps the counters, as it keeps total and fetched
        await s.commit();
        expect(s.detail("q", T)?.features).toEqual(counted);
        s.drop("q");
        s.enqueue("q", 0, enc("m"), 0, T);
        await s.commit();
        expect(s.detail("q", T)?.features).toEqual({ deduplicated: 0, discarded: 0, deadLettered: 0, deadLetterSkipped: 0, fanoutRefused: 0 });
        await s.close();
      });
    });
  });
}
