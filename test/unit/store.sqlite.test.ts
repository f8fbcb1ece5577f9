/** The SQLite store: the shared contract, plus what only a file can show. */
import { afterAll, describe, expect, test } from "bun:test";
import { Database } from "bun:sqlite";
import { copyFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { tempDir } from "../e2e/harness";
import { openSqliteStore, StoreLockedError } from "../../src/store/sqlite";
import { FatalStoreError, StoreError } from "../../src/store/store";
import { storeContract } from "./store.contract";

const dirs: string[] = [];
const fresh = () => {
  const d = tempDir("mcq-store-");
  dirs.push(d);
  return d;
};
afterAll(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

const options = { sync: "off" as const, cacheMb: 8 };
storeContract("sqlite", () => openSqliteStore(fresh(), options));

describe("sqlite file", () => {
  test("messages, counters and ids survive a reopen; open messages come back at their place", () => {
    const dir = fresh();
    let s = openSqliteStore(dir, options);
    for (const b of ["m0", "m1", "m2"]) s.enqueue("q", 7, Buffer.from(b), 0, 1);
    s.dequeue("q", 1);
    const open = s.open("q", 1)!;
    s.commit();
    s.close();
    s = openSqliteStore(dir, options);
    expect(s.list()).toEqual([{ name: "q", total: 3, fetched: 1 }]);
    expect(s.detail("q", 1)).toMatchObject({ items: 2, open: 0 });
    const m = s.dequeue("q", 1)!;
    expect([m.id, m.flags, Buffer.from(m.body).toString()]).toEqual([open.id, 7, "m1"]);
    const next = s.enqueue("q", 0, Buffer.from("m3"), 0, 1);
    expect(next).toBeGreaterThan(open.id + 1);
    s.commit();
    s.close();
  });

  test("a message set and taken in one batch is never written, yet its counters survive a reopen", () => {
    const dir = fresh();
    let s = openSqliteStore(dir, options);
    s.enqueue("q", 0, Buffer.from("kept"), 0, 1);
    s.commit();
    s.enqueue("q", 0, Buffer.from("passing"), 0, 1);
    s.enqueue("q", 0, Buffer.from("passing too"), 0, 1);
    expect(Buffer.from(s.dequeue("q", 1)!.body).toString()).toBe("kept");
    expect(Buffer.from(s.dequeue("q", 1)!.body).toString()).toBe("passing");
    s.commit();
    s.close();
    const db = new Database(join(dir, "mcq.db"), { readonly: true });
    expect(db.query("SELECT body FROM messages").values().map((r) => Buffer.from(r[0] as Uint8Array).toString())).toEqual([
      "passing too",
    ]);
    db.close();
    s = openSqliteStore(dir, options);
    expect(s.list()).toEqual([{ name: "q", total: 3, fetched: 2 }]);
    expect(s.detail("q", 1)).toMatchObject({ items: 1, bytes: 11 });
    s.close();
  });

  test("counters committed and not yet folded into the queues table are exact in a crash image", () => {
    const dir = fresh();
    const s = openSqliteStore(dir, options);
    for (let i = 0; i < 5; i++) s.enqueue(`q${i % 3}`, 0, Buffer.from(`m${i}`), 0, 1);
    s.commit();
    s.maintain(); // folds: the queues table now holds these counters
    s.dequeue("q0", 1);
    s.enqueue("q2", 0, Buffer.from("late"), 0, 1);
    s.commit(); // these live only in the counter log until the next fold
    // What a kill -9 leaves: the file and its WAL as they are now.
    const image = fresh();
    for (const f of ["mcq.db", "mcq.db-wal"]) copyFileSync(join(dir, f), join(image, f));
    s.close();
    const raw = new Database(join(image, "mcq.db"));
    expect(raw.query("SELECT count(*) FROM counter_log").values()[0]![0]).toBe(1);
    raw.close();
    const again = openSqliteStore(image, options);
    expect(again.list()).toEqual([
      { name: "q0", total: 2, fetched: 1 },
      { name: "q1", total: 2, fetched: 0 },
      { name: "q2", total: 2, fetched: 0 },
    ]);
    expect(again.detail("q2", 1)).toMatchObject({ items: 2, bytes: 6 });
    expect(again.enqueue("q0", 0, Buffer.from("next"), 0, 1)).toBeGreaterThan(6);
    again.commit();
    again.close();
  });

  test("a file of schema version 1 is brought up to date and keeps its queues", () => {
    const dir = fresh();
    const v1 = new Database(join(dir, "mcq.db"));
    v1.run("PRAGMA auto_vacuum = INCREMENTAL");
    v1.run("PRAGMA journal_mode = WAL");
    v1.run(`CREATE TABLE queues(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, total INTEGER NOT NULL DEFAULT 0,
      fetched INTEGER NOT NULL DEFAULT 0, items INTEGER NOT NULL DEFAULT 0, bytes INTEGER NOT NULL DEFAULT 0,
      last_id INTEGER NOT NULL DEFAULT 0)`);
    v1.run(`CREATE TABLE messages(id INTEGER PRIMARY KEY, qid INTEGER NOT NULL, flags INTEGER NOT NULL,
      created INTEGER NOT NULL, expires INTEGER NOT NULL, opened INTEGER NOT NULL DEFAULT 0,
      deliveries INTEGER NOT NULL DEFAULT 0, body BLOB NOT NULL)`);
    v1.run("CREATE INDEX messages_head ON messages(qid, opened, id)");
    v1.run("CREATE INDEX messages_expiry ON messages(expires) WHERE expires > 0");
    v1.run("INSERT INTO queues VALUES (1, 'old', 5, 3, 2, 4, 9)");
    v1.run("INSERT INTO messages(id, qid, flags, created, expires, body) VALUES (8, 1, 7, 1, 0, x'6131'), (9, 1, 0, 1, 0, x'6132')");
    v1.run("PRAGMA user_version = 1");
    v1.close();
    const s = openSqliteStore(dir, options);
    expect(s.list()).toEqual([{ name: "old", total: 5, fetched: 3 }]);
    expect(s.dequeue("old", 1)).toEqual({ id: 8, flags: 7, expires: 0, body: expect.anything() });
    expect(s.enqueue("old", 0, Buffer.from("new"), 0, 1)).toBe(10);
    s.commit();
    s.close();
    const db = new Database(join(dir, "mcq.db"), { readonly: true });
    expect(db.query("PRAGMA user_version").values()[0]![0]).toBe(4);
    expect(db.query("SELECT total, fetched, items, bytes FROM queues").values()).toEqual([[6, 4, 2, 5]]);
    db.close();
  });

  test("idempotency tokens survive a reopen until their window ends", () => {
    const dir = fresh();
    let s = openSqliteStore(dir, options);
    s.enqueue("q", 0, Buffer.from("m"), 0, 1);
    s.dedup!.remember("q", "t1", 1000);
    s.commit();
    s.close();
    s = openSqliteStore(dir, options);
    expect([s.dedup!.seen("q", "t1", 999), s.dedup!.seen("q", "t1", 1000)]).toEqual([true, false]);
    s.close();
  });

  test("delayed messages, their due times and ids survive a reopen", () => {
    const dir = fresh();
    let s = openSqliteStore(dir, options);
    const id = s.delays!.enqueue("q", 3, Buffer.from("d"), 0, 1, 500);
    s.commit();
    s.close();
    s = openSqliteStore(dir, options);
    expect(s.detail("q", 1)).toMatchObject({ items: 1, bytes: 1, delayed: 1 });
    expect(s.dequeue("q", 499)).toBeNull();
    const m = s.dequeue("q", 500)!;
    expect([m.flags, Buffer.from(m.body).toString(), m.id > id]).toEqual([3, "d", true]);
    s.commit();
    s.close();
  });

  test("ids are not reused after the queue drains and the server restarts", () => {
    const dir = fresh();
    let s = openSqliteStore(dir, options);
    const first = s.enqueue("q", 0, Buffer.from("a"), 0, 1);
    s.dequeue("q", 1);
    s.commit();
    s.close();
    s = openSqliteStore(dir, options);
    expect(s.enqueue("q", 0, Buffer.from("b"), 0, 1)).toBeGreaterThan(first);
    s.commit();
    s.close();
  });

  // SQLite cannot be made to fail an fsync on demand: the commitFault seam throws what COMMIT
  // would, with the code SQLite gives an fsync that returned EIO.
  test("issue 9: a commit whose fsync fails is fatal: FatalStoreError, onFatal once, nothing more is done", () => {
    const dir = fresh();
    const heard: FatalStoreError[] = [];
    let fault: { code: string } | null = null;
    const s = openSqliteStore(dir, {
      ...options,
      onFatal: (e) => heard.push(e),
      commitFault: () => {
        if (fault !== null) throw Object.assign(new Error("disk I/O error"), fault);
      },
    });
    s.enqueue("q", 0, Buffer.from("acked"), 0, 1);
    s.commit();
    // A full disk is not fatal: the batch is undone and the store goes on.
    fault = { code: "SQLITE_FULL" };
    s.enqueue("q", 0, Buffer.from("refused"), 0, 1);
    let full: unknown = null;
    try {
      s.commit();
    } catch (e) {
      full = e;
    }
    expect([full instanceof StoreError, full instanceof FatalStoreError, (full as Error).message]).toEqual([true, false, "out of space"]);
    s.rollback();
    fault = { code: "SQLITE_IOERR_FSYNC" };
    s.enqueue("q", 0, Buffer.from("lost"), 0, 1000); // later: the reserve given back is written again
    expect(() => s.commit()).toThrow(new FatalStoreError("I/O error (SQLITE_IOERR_FSYNC)"));
    expect(heard.map((e) => [e.name, e.message])).toEqual([["FatalStoreError", "I/O error (SQLITE_IOERR_FSYNC)"]]);
    s.rollback();
    fault = null; // even once fsync "works" again, nothing more is acknowledged
    expect(() => s.enqueue("q", 0, Buffer.from("after"), 0, 1)).toThrow(FatalStoreError);
    expect(() => s.dequeue("q", 1)).toThrow(FatalStoreError);
    expect(() => s.commit()).toThrow(FatalStoreError);
    expect(() => s.maintain()).toThrow(FatalStoreError);
    expect(s.writable(1)).toBe(false);
    expect(heard.length).toBe(1);
    // close() leaves the files as a crash would; what they hold is what was acknowledged.
    s.close();
    const image = fresh();
    for (const f of ["mcq.db", "mcq.db-wal"]) copyFileSync(join(dir, f), join(image, f));
    const again = openSqliteStore(image, options);
    expect(Buffer.from(again.dequeue("q", 1)!.body).toString()).toBe("acked");
    expect(again.dequeue("q", 1)).toBeNull();
    again.close();
  });

  test("issue 9.6: a sweep with nothing due opens no transaction, so maintain() still folds the counter log", () => {
    const dir = fresh();
    const s = openSqliteStore(dir, options);
    /** The server's housekeeping step with --expiry (housekeeping.ts: the sweep in a turn, upkeep once clean). */
    const housekeeping = (now: number) => {
      const swept = s.sweepExpired(now, 100);
      if (!s.dirty()) s.maintain();
      return swept;
    };
    for (const b of ["a", "b", "c"]) s.enqueue("e", 0, Buffer.from(b), 1000, 1);
    s.commit();
    s.dequeue("e", 2);
    s.commit(); // two counter_log rows
    expect(housekeeping(10)).toBe(0);
    expect(s.dirty()).toBe(false);
    const image = fresh();
    for (const f of ["mcq.db", "mcq.db-wal"]) copyFileSync(join(dir, f), join(image, f));
    const raw = new Database(join(image, "mcq.db"));
    expect(raw.query("SELECT count(*) FROM counter_log").values()[0]![0]).toBe(0);
    raw.close();
    // Something due: the sweep joins a batch, which the next turn commits.
    expect(housekeeping(1000)).toBe(2);
    expect(s.dirty()).toBe(true);
    s.commit();
    expect(housekeeping(1001)).toBe(0);
    expect(s.dirty()).toBe(false);
    expect(s.totals()).toMatchObject({ items: 0, expired: 2 });
    s.close();
  });

  test("a second store on the same directory is refused while the first is open", () => {
    const dir = fresh();
    const s = openSqliteStore(dir, options);
    expect(() => openSqliteStore(dir, options)).toThrow(StoreLockedError);
    s.close();
    openSqliteStore(dir, options).close();
  });
});
