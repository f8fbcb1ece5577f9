/** The SQLite store: the shared contract, plus what only a file can show. */
import { afterAll, describe, expect, test } from "bun:test";
import { Database } from "bun:sqlite";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { openSqliteStore, StoreLockedError } from "../../src/store/sqlite";
import { storeContract } from "./store.contract";

const dirs: string[] = [];
const fresh = () => {
  const d = mkdtempSync(join(tmpdir(), "mcq-store-"));
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

  test("a second store on the same directory is refused while the first is open", () => {
    const dir = fresh();
    const s = openSqliteStore(dir, options);
    expect(() => openSqliteStore(dir, options)).toThrow(StoreLockedError);
    s.close();
    openSqliteStore(dir, options).close();
  });
});
