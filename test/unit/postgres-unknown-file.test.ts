/**
 * The file of batches of unknown outcome (src/store/postgres-unknown-file.ts) on its own: its
 * bound and the entries it cannot ask about, and the check of each entry's shape at load.
 */
import { expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { shape, unknownFile } from "../../src/store/postgres-unknown-file";

const HERE = { system: "7", database: "mcq", schema: "s", legacy: "postgres://u@127.0.0.1:5432/mcq schema s" };

test("another store's entries stay in the file when this store's fill it to its bound: this store's overflow is the one kept in memory (review 10b R3)", () => {
  const home = mkdtempSync(join(tmpdir(), "mcq-unknown-"));
  const file = join(home, "postgres-unresolved.json");
  const row = (id: number, body: string) => ({ id, queue: "q", flags: 0, created: 0, expires: 0, deliveries: 0, body });
  const other = { xid: "9", pid: 1, server: "S2/1/1", node: 7, store: { system: "S2", database: "other", schema: "s" }, taken: [row(1, Buffer.from("other store's message").toString("base64"))], leased: [], unanswered: 0 };
  writeFileSync(file, JSON.stringify([other]));
  for (const n of [2800, 2850, 2900]) {
    const f = unknownFile(home, { ...HERE, system: "S1" }, () => {}, 4096);
    expect(f.load()).toEqual([]);
    const small = { ...other, xid: "10", server: "S1/1/1", node: 1, store: { system: "S1", database: "mcq", schema: "s" }, taken: [{ ...row(2, ""), body: Buffer.from("x") }] };
    const big = { ...small, xid: "11", taken: [{ ...row(3, ""), body: Buffer.alloc(n, 97) }] };
    const left = f.save([small, big] as never);
    expect(left.map((u) => u.xid)).toEqual(["11"]); // before: 9, the other store's, left out (and lost at the next stop)
    expect((JSON.parse(readFileSync(file, "utf8")) as { xid: string }[]).map((u) => u.xid)).toEqual(["9", "10"]);
    expect(f.save([]).length).toBe(0); // this store's settled: the other store's stays
    expect(JSON.parse(readFileSync(file, "utf8"))).toEqual([other]);
  }
  rmSync(home, { recursive: true });
});

test("an entry's shape is checked field by field at load: each wrong one named (review 10b R5)", () => {
  const good = { xid: "12", pid: 3, server: null, node: 1, store: "postgres://u@h/db schema s", leased: [4], unanswered: 0,
    taken: [{ id: 5, queue: "q", flags: 0, expires: 0, created: 1, deliveries: 0, body: "aGk=" }] };
  expect(shape(good)).toBeNull();
  expect(shape({ ...good, store: { system: "7", database: "mcq", schema: "s", id: "u" } })).toBeNull();
  const bad: [object, string][] = [
    [[], "not an object"],
    [{ ...good, xid: 12 }, "xid 12 is not a transaction id"],
    [{ ...good, xid: "1e3" }, 'xid "1e3" is not a transaction id'],
    [{ ...good, pid: "3" }, 'transaction 12: pid "3" is not valid'],
    [{ ...good, node: undefined }, "transaction 12: node missing is not valid"],
    [{ ...good, server: 7 }, "transaction 12: server 7 is not valid"],
    [{ ...good, store: { database: "mcq" } }, 'transaction 12: store {"database":"mcq"} is not valid'],
    [{ ...good, leased: [1.5] }, "transaction 12: leased is not a list of message ids"],
    [{ ...good, taken: {} }, "transaction 12: taken is not a list of rows"],
    [{ ...good, taken: [null] }, "transaction 12: a taken row is not an object"],
    [{ ...good, taken: [{ ...good.taken[0], deliveries: null }] }, "transaction 12: a taken row's deliveries is not valid"],
    [{ ...good, taken: [{ ...good.taken[0], body: "not base64!" }] }, "transaction 12: a taken row's body is not valid"],
  ];
  expect(bad.map(([u]) => shape(u))).toEqual(bad.map(([, why]) => why));
});
