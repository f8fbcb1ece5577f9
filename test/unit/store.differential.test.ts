/**
 * The SQLite store against the memory store under a seeded random mix of every operation,
 * compared after each step. It covers what the contract's small cases cannot: the read-ahead
 * of head ids across hundreds of messages, releases into the middle of it, rollbacks and sweeps.
 */
import { expect, test } from "bun:test";
import { rmSync } from "node:fs";
import { tempDir } from "../e2e/harness";
import { createMemoryStore } from "../../src/store/memory";
import { openSqliteStore } from "../../src/store/sqlite";
import type { Message, SyncQueueStore as QueueStore } from "../../src/store/store";
import { random } from "../random";

const view = (m: Message | null) => (m === null ? null : { flags: m.flags, body: Buffer.from(m.body).toString() });

for (const seed of [1, 2, 3]) {
  test(`seed ${seed}: 5000 random operations agree`, () => {
    const dir = tempDir("mcq-diff-"); // removed below, or after the run if the test fails
    let sqlite = openSqliteStore(dir, { sync: "off", cacheMb: 8 });
    const memory = createMemoryStore();
    const rnd = random(seed);
    const queues = ["a", "b", "c"];
    // Message ids differ between the stores; each keeps its own map from body to id for the opens.
    let opens: Record<string, string[]> = { a: [], b: [], c: [] };
    let committed = structuredClone(opens);
    const idOf = new Map<QueueStore, Map<string, number>>([[sqlite, new Map()], [memory, new Map()]]);
    let now = 1_000_000;
    let n = 0;
    const both = <T>(fn: (s: QueueStore) => T): [T, T] => [fn(sqlite), fn(memory)];
    try {
      for (let step = 0; step < 5000; step++) {
        const q = queues[Math.floor(rnd() * queues.length)]!;
        const r = rnd();
        now += Math.floor(rnd() * 3);
        let got: [unknown, unknown];
        if (r < 0.4) {
          // Some bodies are larger than what the SQLite store reads ahead or holds in memory.
          const size = rnd();
          const body = `m${n++}` + (size < 0.05 ? "L".repeat(20_000) : size < 0.15 ? "l".repeat(1500) : "");
          const expires = rnd() < 0.1 ? now + Math.floor(rnd() * 20) : 0;
          got = [null, null];
          for (const s of [sqlite, memory]) idOf.get(s)!.set(body, s.enqueue(q, n, Buffer.from(body), expires, now));
        } else if (r < 0.6) {
          got = both((s) => view(s.dequeue(q, now)));
        } else if (r < 0.68) {
          const [a, b] = both((s) => s.open(q, now));
          got = [view(a), view(b)];
          if (a !== null) opens[q]!.push(Buffer.from(a.body).toString());
        } else if (r < 0.74 && opens[q]!.length > 0) {
          const body = opens[q]!.splice(Math.floor(rnd() * opens[q]!.length), 1)[0]!;
          got = both((s) => s.confirm(q, idOf.get(s)!.get(body)!));
        } else if (r < 0.8 && opens[q]!.length > 0) {
          const body = opens[q]!.splice(Math.floor(rnd() * opens[q]!.length), 1)[0]!;
          got = both((s) => s.release(q, idOf.get(s)!.get(body)!));
        } else if (r < 0.88) {
          got = both((s) => view(s.peek(q, now)));
        } else if (r < 0.9) {
          got = both((s) => s.sweepExpired(now, 1_000_000)); // all: each store may pick a different batch
        } else if (r < 0.905) {
          got = both((s) => s.flush(q));
          opens[q] = [];
        } else if (r < 0.91) {
          got = both((s) => s.drop(q));
          opens[q] = [];
        } else if (r < 0.95) {
          got = both((s) => s.commit());
          committed = structuredClone(opens);
          if (rnd() < 0.5) both((s) => s.maintain()); // folds the SQLite store's counter log
        } else if (r < 0.96) {
          got = both((s) => s.rollback());
          opens = structuredClone(committed); // opens and closes since the last commit are undone too
        } else {
          got = both((s) => ({ list: s.list(), detail: s.detail(q, now), summaries: [...s.summaries()] }));
        }
        expect([step, got[0], sqlite.totals()]).toEqual([step, got[1], memory.totals()]);
      }
      expect(sqlite.totals()).toEqual(memory.totals());
      // What the file holds is what the memory store holds: confirm every open message, commit,
      // reopen the file, and drain both.
      for (const [q, bodies] of Object.entries(opens)) {
        for (const body of bodies) expect(both((s) => s.confirm(q, idOf.get(s)!.get(body)!))).toEqual([true, true]);
        opens[q] = [];
      }
      both((s) => s.commit());
      sqlite.close();
      sqlite = openSqliteStore(dir, { sync: "off", cacheMb: 8 });
      for (const q of queues) {
        for (;;) {
          const got = both((s) => view(s.dequeue(q, now)));
          expect(got[0]).toEqual(got[1]);
          if (got[0] === null) break;
        }
      }
      const { expired: _, ...left } = memory.totals(); // the expired count is not kept in the file
      expect(sqlite.totals()).toMatchObject(left);
    } finally {
      sqlite.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
}
