/**
 * The SQLite data file across schema versions, and the feature counters (schema 4) in it: a file
 * written by mcq before them (schema 3, or 2) opens and migrates, counters and messages intact,
 * even one a kill -9 left with counters only in its counter log; the feature counters come back
 * exact after a reopen and in a crash image.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { Database } from "bun:sqlite";
import { copyFileSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { openSqliteStore } from "../../src/store/sqlite";

const dirs: string[] = [];
const fresh = () => {
  const d = mkdtempSync(join(tmpdir(), "mcq-schema-"));
  dirs.push(d);
  return d;
};
afterAll(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

const options = { sync: "off" as const, cacheMb: 8 };
const text = (m: { body: Uint8Array } | null) => (m === null ? null : Buffer.from(m.body).toString());

/**
 * A data file as mcq of schema 3 (main at 6413b35, src/store/sqlite-file.ts) writes it: its exact
 * schema, queue `old` with two messages, its counters folded into the queues table as of one
 * earlier batch (total 1), and the newer ones only in the counter log, in that version's
 * five-number layout, as a kill -9 leaves them.
 */
function schema3File(dir: string): void {
  const db = new Database(join(dir, "mcq.db"));
  db.run("PRAGMA auto_vacuum = INCREMENTAL");
  db.run("PRAGMA journal_mode = WAL");
  db.run(`CREATE TABLE queues(
      id INTEGER PRIMARY KEY,
      name TEXT NOT NULL UNIQUE,
      total INTEGER NOT NULL DEFAULT 0,
      fetched INTEGER NOT NULL DEFAULT 0,
      items INTEGER NOT NULL DEFAULT 0,
      bytes INTEGER NOT NULL DEFAULT 0,
      last_id INTEGER NOT NULL DEFAULT 0)`);
  db.run(`CREATE TABLE messages(
      id INTEGER PRIMARY KEY,
      qid INTEGER NOT NULL,
      flags INTEGER NOT NULL,
      created INTEGER NOT NULL,
      expires INTEGER NOT NULL,
      opened INTEGER NOT NULL DEFAULT 0,
      deliveries INTEGER NOT NULL DEFAULT 0,
      body BLOB NOT NULL)`);
  db.run("CREATE INDEX messages_head ON messages(qid, opened, id)");
  db.run("CREATE INDEX messages_expiry ON messages(expires) WHERE expires > 0");
  db.run("CREATE TABLE counter_log(id INTEGER PRIMARY KEY, data BLOB NOT NULL)");
  db.run(`CREATE TABLE delayed(
    id INTEGER PRIMARY KEY,
    qid INTEGER NOT NULL,
    due INTEGER NOT NULL,
    flags INTEGER NOT NULL,
    created INTEGER NOT NULL,
    expires INTEGER NOT NULL,
    deliveries INTEGER NOT NULL DEFAULT 0,
    body BLOB NOT NULL)`);
  db.run("CREATE INDEX delayed_due ON delayed(due)");
  db.run("CREATE INDEX delayed_queue ON delayed(qid, due, id)");
  db.run("CREATE TABLE dedup(queue TEXT NOT NULL, token TEXT NOT NULL, until INTEGER NOT NULL, UNIQUE(queue, token))");
  db.run("CREATE INDEX dedup_until ON dedup(until)");
  db.run("INSERT INTO queues(id, name, total, fetched, items, bytes, last_id) VALUES (1, 'old', 1, 0, 1, 2, 1)");
  db.run("INSERT INTO messages(id, qid, flags, created, expires, body) VALUES (2, 1, 7, 1, 0, x'6132'), (3, 1, 0, 1, 0, x'6133')");
  db.run("INSERT INTO dedup VALUES ('old', 'tok', 5000)");
  // lastId, then per queue: qid, total, fetched, items, bytes (counter-log.ts before schema 4).
  db.query("INSERT INTO counter_log(data) VALUES (?)").run(new Uint8Array(new Float64Array([3, 1, 3, 1, 2, 4]).buffer));
  db.run("PRAGMA user_version = 3");
  db.close();
}

/** What a kill -9 leaves: the file and its WAL as they are now, copied into a new directory. */
function crashImage(dir: string): string {
  const image = fresh();
  for (const f of ["mcq.db", "mcq.db-wal"]) {
    try {
      copyFileSync(join(dir, f), join(image, f));
    } catch {
      // no WAL right after a truncating checkpoint
    }
  }
  return image;
}

const NONE = { deduplicated: 0, discarded: 0, deadLettered: 0, deadLetterSkipped: 0, fanoutRefused: 0 };

describe("sqlite schema", () => {
  test("a file of schema 3 with counters only in its log opens exactly and migrates to 4", () => {
    const dir = fresh();
    schema3File(dir);
    let s = openSqliteStore(dir, options);
    expect(s.list()).toEqual([{ name: "old", total: 3, fetched: 1 }]);
    expect(s.detail("old", 1)).toMatchObject({ items: 2, bytes: 4, features: NONE, deduplicated: 0 });
    expect(s.dedup!.seen("old", "tok", 10)).toBe(true); // its tokens are kept, and the retry is counted
    expect(text(s.dequeue("old", 1))).toBe("a2");
    expect(s.enqueue("old", 0, Buffer.from("new"), 0, 1)).toBe(4); // no id given twice
    s.commit();
    s.close();
    const db = new Database(join(dir, "mcq.db"), { readonly: true });
    expect(db.query("PRAGMA user_version").values()[0]![0]).toBe(4);
    expect(db.query("SELECT total, fetched, items, bytes, deduplicated, discarded FROM queues").values()).toEqual([[4, 2, 2, 5, 1, 0]]);
    db.close();
    s = openSqliteStore(dir, options);
    expect([text(s.dequeue("old", 1)), text(s.dequeue("old", 1))]).toEqual(["a3", "new"]);
    expect(s.detail("old", 1)?.features).toEqual({ ...NONE, deduplicated: 1 });
    s.close();
  });

  test("a file of schema 2 (mcq before delays) gains the delayed and dedup tables and keeps its messages", () => {
    const dir = fresh();
    schema3File(dir);
    const v2 = new Database(join(dir, "mcq.db"));
    v2.run("DROP TABLE delayed");
    v2.run("DROP TABLE dedup");
    v2.run("PRAGMA user_version = 2");
    v2.close();
    let s = openSqliteStore(dir, options);
    expect(s.detail("old", 1)).toMatchObject({ total: 3, items: 2, delayed: 0, features: NONE });
    expect(text(s.dequeue("old", 1))).toBe("a2");
    s.delays!.enqueue("old", 0, Buffer.from("later"), 0, 1, 1000);
    s.commit();
    s.close();
    s = openSqliteStore(dir, options);
    expect(s.detail("old", 1)).toMatchObject({ items: 2, delayed: 1 });
    expect([s.dequeue("old", 999), s.dequeue("old", 999)].map(text)).toEqual(["a3", null]);
    expect(text(s.dequeue("old", 1000))).toBe("later");
    s.commit();
    s.close();
  });

  test("a file of a newer schema is refused, naming it", () => {
    const dir = fresh();
    const db = new Database(join(dir, "mcq.db"));
    db.run("CREATE TABLE x(a)");
    db.run("PRAGMA user_version = 5");
    db.close();
    expect(() => openSqliteStore(dir, options)).toThrow("is not an mcq data file of a version this mcq reads (schema 5)");
  });

  test("feature counters are exact in a crash image, in the log and once folded, and after a clean close", () => {
    const dir = fresh();
    const s = openSqliteStore(dir, options);
    s.enqueue("q", 0, Buffer.from("m"), 0, 1);
    s.dedup!.remember("q", "t", 1000);
    s.commit();
    expect(s.dedup!.seen("q", "t", 2)).toBe(true);
    s.countFeature!("q", "discarded");
    s.commit();
    s.maintain(); // folded into the queues table
    const folded = crashImage(dir);
    s.countFeature!("q", "deadLettered");
    s.countFeature!("q", "fanoutRefused");
    s.commit(); // in the counter log only
    const logged = crashImage(dir);
    s.countFeature!("q", "deadLetterSkipped");
    s.rollback(); // never committed: in no image
    s.close();
    const want = [
      [folded, { ...NONE, deduplicated: 1, discarded: 1 }],
      [logged, { ...NONE, deduplicated: 1, discarded: 1, deadLettered: 1, fanoutRefused: 1 }],
      [dir, { ...NONE, deduplicated: 1, discarded: 1, deadLettered: 1, fanoutRefused: 1 }],
    ] as const;
    for (const [where, features] of want) {
      const again = openSqliteStore(where, options);
      expect(again.detail("q", 1)).toMatchObject({ items: 1, total: 1, features, deduplicated: features.deduplicated });
      again.close();
    }
  });
});
