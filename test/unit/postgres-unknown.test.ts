/**
 * The list of batches of unknown outcome (src/store/postgres-unknown.ts) with a fake store: the
 * order of events between overlapping asks is set by the test, not by timing.
 */
import { expect, test } from "bun:test";
import { SQL } from "bun";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createUnknown, type UnknownDeps } from "../../src/store/postgres-unknown";
import { migrate } from "../../src/store/postgres-schema";
import { statements, type Row } from "../../src/store/postgres-sql";
import { freshSchema, havePostgres, PG_URL } from "../pg";

/** The store the fake deps stand for (postgres-unknown-file.ts belongs). */
const HERE = { system: "7", database: "mcq", schema: "s", legacy: "postgres://u@127.0.0.1:5432/mcq schema s" };

/** A batch kept after its COMMIT got no answer: one message taken. */
const tx = (xid: string) =>
  ({
    xact: { xid, pid: 1 },
    server: "srv",
    taken: [{ id: Number(xid), queue: "q", flags: 0, created: 1, expires: 0, deliveries: 0, body: new Uint8Array(1) }],
    leased: [],
    unanswered: 0,
  }) as never;

function fakeDeps(over: Partial<UnknownDeps>, logs: string[]): UnknownDeps {
  const settled = new Set<string>();
  const st = {
    identity: async () => "srv",
    // 200: its backend not ended yet, so it stays in progress
    resolve: async (_s: unknown, xid: string) => (xid === "200" ? "in progress" : "committed"),
    giveBack: async (_s: unknown, key: string) => {
      const first = !settled.has(key);
      settled.add(key);
      return { settled: first ? 1 : 0, back: first ? 1 : 0, released: 0, queues: first ? ["q"] : null };
    },
  };
  return {
    st: st as never,
    node: 1,
    timeoutMs: 20,
    side: () => ({ close: async () => {} }) as never,
    identity: async () => "srv",
    gaveBack: async () => {},
    reason: (e) => ({ message: (e as Error).message }) as never,
    log: (l, m) => void logs.push(`${l} ${m}`),
    home: null,
    here: HERE,
    ...over,
  };
}

test("an ask cut off by its timeout touches the list no more when it resumes (review 6 F3)", async () => {
  const logs: string[] = [];
  let release = () => {};
  const held = new Promise<void>((r) => (release = r));
  let first = true;
  // The first give-back's refresh hangs (a slow main connection) past the timeout.
  const gaveBack = async () => {
    if (first) {
      first = false;
      await held;
    }
  };
  const u = createUnknown(fakeDeps({ gaveBack }, logs));
  u.keep(tx("100"));
  u.keep(tx("200"));
  await u.ask(); // #1: gives 100 back, hangs in its refresh, cut off after 20 ms; 200 is asked all the same
  expect(logs.at(-1)).toBe("warn Postgres: transaction 200 (1 messages taken, 0 opened) stays of unknown outcome (its backend could not be ended: still in progress); asking again about once a second");
  await u.ask(); // #2: 100 was given back already; 200 still in progress
  expect(u.pending()).toBe(1);
  release(); // #1 resumes
  await new Promise((r) => setTimeout(r, 0));
  expect(u.pending()).toBe(1); // 200 is still kept (it was dropped by splice(-1, 1))
  expect(logs.filter((l) => l.includes("transaction 100"))).toEqual([
    // #2's log comes first: #1's comes after its refresh
    "warn Postgres: transaction 100 (1 messages taken, 0 opened) is asked about again once Postgres answers",
    "warn Postgres: transaction 100 (1 messages taken, 0 opened) stays of unknown outcome (no answer within 20 ms); asking again about once a second",
    "info Postgres: transaction 100 had committed: given back already",
    "warn Postgres: transaction 100 had committed: gave back 1 messages taken and 0 opened",
  ]);
});

if (havePostgres("unit postgres identity")) {
  test("a server's identity names its system, its timeline and its start (the checkpointer's, which a crash reinitialization renews) (review 6 F7)", async () => {
    const sql = new SQL(PG_URL!, { max: 1 });
    try {
      const id = await statements("public").identity(sql);
      const [row] = await sql.unsafe(
        `SELECT (SELECT system_identifier::text FROM pg_control_system()) AS system,
                (SELECT (extract(epoch FROM backend_start) * 1000000)::int8::text FROM pg_stat_activity WHERE backend_type = 'checkpointer') AS start`,
      );
      expect(id).toBe(`${row.system}/00000001/${row.start}`);
    } finally {
      await sql.close();
    }
  });
}

test("a batch of 8 MiB of bodies is kept as base64 (JSON of Buffers took about 2 s), and the file reads back exactly; past the file's bound, memory only (review 6 F4)", () => {
  const home = mkdtempSync(join(tmpdir(), "mcq-unknown-"));
  const logs: string[] = [];
  const deps = fakeDeps({ home, fileCap: 12 << 20 }, logs);
  const u = createUnknown(deps);
  const bodies = Array.from({ length: 8 }, (_, i) => Buffer.alloc(1 << 20, 97 + i));
  const big = (xid: string) =>
    ({
      xact: { xid, pid: 1 },
      server: "srv",
      taken: bodies.map((body, i) => ({ id: i, queue: "q", flags: 0, created: 1, expires: 0, deliveries: 0, body })),
      leased: [],
      unanswered: 0,
    }) as never;
  u.keep(big("300"));
  const file = join(home, "postgres-unresolved.json");
  expect(statSync(file).size).toBeLessThan(12 << 20);
  // Read back by a node started on the directory: the same bytes.
  const again = createUnknown(fakeDeps({ home }, logs));
  expect(again.pending()).toBe(1);
  const back = JSON.parse(readFileSync(file, "utf8")) as { taken: { body: string }[] }[];
  expect(back[0]!.taken.map((r, i) => Buffer.from(r.body, "base64").equals(bodies[i]!))).toEqual(Array(8).fill(true));
  // A second such batch would pass the bound: kept in memory only, and said so, without encoding it.
  u.keep(big("301"));
  expect(u.pending()).toBe(2);
  expect(logs).toContain(`warn Postgres: ${file} would pass ${12 << 20} bytes: transaction 301 is asked about again only while this node runs`);
  expect((JSON.parse(readFileSync(file, "utf8")) as { xid: string }[]).map((e) => e.xid)).toEqual(["300"]);
  rmSync(home, { recursive: true });
});

if (havePostgres("unit postgres give-back")) {
  test("a give-back brings back nothing into a queue deleted or flushed since, nor from before a flush_all; a message after the flush comes back (review 6 F2)", async () => {
    const schema = freshSchema("giveback");
    const sql = new SQL(PG_URL!, { max: 1 });
    try {
      await migrate(sql, schema);
      const st = statements(schema);
      /** A message set then taken by a batch whose outcome stayed unknown: its row, gone from the table. */
      const taken = async (queue: string): Promise<Required<Row>> => {
        const [r] = await sql.unsafe(
          `INSERT INTO ${schema}.mcq_messages (queue, flags, created, expires, body) VALUES ($1, 0, 1, 0, $2) RETURNING id::float8 AS id, queue, flags::float8 AS flags, created::float8 AS created, expires::float8 AS expires, deliveries, body`,
          [queue, Buffer.from(queue)],
        );
        await sql.unsafe(`INSERT INTO ${schema}.mcq_counters (queue, node, total, fetched) VALUES ($1, 1, 1, 1) ON CONFLICT DO NOTHING`, [queue]);
        await sql.unsafe(`DELETE FROM ${schema}.mcq_messages WHERE id = $1`, [r.id]);
        return r as Required<Row>;
      };
      const back = async (key: string, rows: Required<Row>[]) => (await st.giveBack(sql, key, 1, 1, rows, [], "1")).back;
      const there = async () => (await sql.unsafe(`SELECT queue FROM ${schema}.mcq_messages ORDER BY id`)).map((r: { queue: string }) => r.queue);

      const [a, b, c] = [await taken("a"), await taken("b"), await taken("c")];
      expect(await st.drop(sql, ["a"])).toEqual(["a"]); // delete a
      await st.flush(sql, ["b"], 1); // flush b
      expect(await back("s/1", [a, b, c])).toBe(1); // only c
      expect(await there()).toEqual(["c"]);
      expect((await sql.unsafe(`SELECT count(*)::int AS n FROM ${schema}.mcq_counters WHERE queue = 'a'`))[0].n).toBe(0); // a stays deleted

      const [d, e] = [await taken("d"), await taken("b")]; // e: set into b after its flush
      await st.flush(sql, null, 1); // flush_all
      const f = await taken("d"); // after it
      expect(await back("s/2", [d, e, f])).toBe(1);
      expect(await there()).toEqual(["d"]);
      expect((await sql.unsafe(`SELECT id::float8 AS id FROM ${schema}.mcq_messages`))[0].id).toBe(f.id);
    } finally {
      await sql.unsafe(`DROP SCHEMA IF EXISTS ${schema} CASCADE`).catch(() => {});
      await sql.close();
    }
  });
}

test("a corrupt list file is said and moved aside, not dropped silently nor overwritten (review 6 F6)", () => {
  const home = mkdtempSync(join(tmpdir(), "mcq-unknown-"));
  const file = join(home, "postgres-unresolved.json");
  writeFileSync(file, '[{"xid": "12", "taken": [');
  const logs: string[] = [];
  const u = createUnknown(fakeDeps({ home }, logs));
  expect(u.pending()).toBe(0);
  const aside = readdirSync(home).filter((f) => f.startsWith("postgres-unresolved.json.corrupt-"));
  expect(aside.length).toBe(1);
  expect(readFileSync(join(home, aside[0]!), "utf8")).toBe('[{"xid": "12", "taken": [');
  expect(logs.length).toBe(1);
  expect(logs[0]).toStartWith(`warn Postgres: ${file} is corrupt (`);
  expect(logs[0]).toEndWith(`): moved to ${join(home, aside[0]!)}; the batches it names are not asked about`);
  expect(existsSync(file)).toBe(false);
  rmSync(home, { recursive: true });
});

test("the file's entries are this store's by database, schema and system, however the URL was spelled; a legacy URL key is migrated when its server's system is this one (review 6 F5)", async () => {
  const home = mkdtempSync(join(tmpdir(), "mcq-unknown-"));
  const file = join(home, "postgres-unresolved.json");
  const entry = (xid: string, store: unknown, server: string | null) => ({
    xid, pid: 1, server, node: 1, store, leased: [], unanswered: 0,
    taken: [{ id: Number(xid), queue: "q", flags: 0, created: 1, expires: 0, deliveries: 0, body: Buffer.from(xid).toString("base64") }],
  });
  writeFileSync(file, JSON.stringify([
    entry("1", { system: "7", database: "mcq", schema: "s" }, "7/00000001/5"), // this store
    entry("2", "postgres://u@localhost:5432,other:5432/mcq?application_name=x schema s", "7/00000002/9"), // legacy key, another spelling, same system
    entry("3", "postgres://u@127.0.0.1:5432/mcq schema s", "8/00000001/5"), // legacy, the URL of now: as before, this store
    entry("4", "postgres://u@localhost/mcq schema s", null), // legacy, server unknown: the rows decide
    entry("5", "postgres://u@127.0.0.1:5432/mcq schema s2", "7/00000001/5"), // another schema
    entry("6", "postgres://u@127.0.0.1:5432/other schema s", "7/00000001/5"), // another database
    entry("7", { system: "9", database: "mcq", schema: "s" }, "9/00000001/5"), // another cluster
    entry("8", "postgres://u@localhost schema s", "7/00000001/5"), // no database in the URL: not this spelling, not known
  ]));
  const logs: string[] = [];
  const asked: string[] = [];
  const st = {
    identity: async () => "srv",
    giveBack: async (_s: unknown, key: string) => (asked.push(key), { settled: 1, back: 1, released: 0, queues: null }),
    resolve: async () => "committed",
  };
  const u = createUnknown({ ...fakeDeps({ home }, logs), st: st as never });
  expect(u.pending()).toBe(4);
  expect(logs).toEqual([
    `warn Postgres: ${file} names 4 batches of unknown outcome of another store (postgres://u@127.0.0.1:5432/mcq schema s2): left as they are`,
    "warn Postgres: 4 batches of this directory's previous node have an unknown outcome: asking again",
  ]);
  await u.ask(); // the identity here is "srv": every one by rows
  expect(asked).toEqual(["7/00000001/5/1", "7/00000002/9/2", "8/00000001/5/3", "node 1/4"]);
  expect(u.pending()).toBe(0);
  // The others are left in the file as they were.
  const left = JSON.parse(readFileSync(file, "utf8")) as { xid: string; store: unknown }[];
  expect(left.map((e) => [e.xid, e.store])).toEqual([
    ["5", "postgres://u@127.0.0.1:5432/mcq schema s2"],
    ["6", "postgres://u@127.0.0.1:5432/other schema s"],
    ["7", { system: "9", database: "mcq", schema: "s" }],
    ["8", "postgres://u@localhost schema s"],
  ]);
  rmSync(home, { recursive: true });
});

test("a kept entry names its store by database, schema and system, not by URL (review 6 F5)", () => {
  const home = mkdtempSync(join(tmpdir(), "mcq-unknown-"));
  createUnknown(fakeDeps({ home }, [])).keep(tx("42"));
  const kept = JSON.parse(readFileSync(join(home, "postgres-unresolved.json"), "utf8")) as { store: unknown }[];
  expect(kept[0]!.store).toEqual({ system: "7", database: "mcq", schema: "s" });
  // Read by a node of the same database whose system cannot be read: its (the rows decide).
  expect(createUnknown(fakeDeps({ home, here: { ...HERE, system: null, legacy: "x" } }, [])).pending()).toBe(1);
  expect(createUnknown(fakeDeps({ home, here: { ...HERE, system: "8", legacy: "x" } }, [])).pending()).toBe(0);
  rmSync(home, { recursive: true });
});

test("read where the system cannot be read, an entry keeps the system it had and gets the schema's identity; another schema of the same names has another (review 10b R4)", () => {
  const home = mkdtempSync(join(tmpdir(), "mcq-unknown-"));
  const file = join(home, "postgres-unresolved.json");
  createUnknown(fakeDeps({ home }, [])).keep(tx("42")); // written before the schema had an identity: system 7, no id
  const u = createUnknown(fakeDeps({ home, here: { ...HERE, system: null, id: "u-1", legacy: "x" } }, []));
  expect(u.pending()).toBe(1);
  u.keep(tx("43")); // writes the list again
  const stores = (JSON.parse(readFileSync(file, "utf8")) as { xid: string; store: unknown }[]).map((e) => [e.xid, e.store]);
  expect(stores).toEqual([
    ["42", { system: "7", database: "mcq", schema: "s", id: "u-1" }], // before: system null, for good
    ["43", { system: null, database: "mcq", schema: "s", id: "u-1" }],
  ]);
  // A schema of the same names elsewhere (a copied data directory), its system not to be read either: not its entries.
  expect(createUnknown(fakeDeps({ home, here: { ...HERE, system: null, id: "u-2", legacy: "x" } }, [])).pending()).toBe(0);
  expect(createUnknown(fakeDeps({ home, here: { ...HERE, id: "u-1", legacy: "x" } }, [])).pending()).toBe(2); // this one (43: system unknown)
  rmSync(home, { recursive: true });
});

test("the identity failing for now (not a server that never lets it be read): nothing given back by rows, asked again, then exactly (review 6 R)", async () => {
  const logs: string[] = [];
  let fails = true;
  const identity = async () => {
    if (fails) throw new Error("Connection closed");
    return "srv";
  };
  const u = createUnknown(fakeDeps({ identity }, logs));
  u.keep(tx("100"));
  await u.ask();
  expect(u.pending()).toBe(1);
  expect(logs.at(-1)).toBe("warn Postgres: asking about 1 batches of unknown outcome: Connection closed; asking again later");
  fails = false;
  await u.ask();
  expect(u.pending()).toBe(0);
  expect(logs.at(-1)).toBe("warn Postgres: transaction 100 had committed: gave back 1 messages taken and 0 opened");
});

test("one batch whose answer never comes does not starve the others; it is said once, then at 1 min, 10 min and hourly, with its xid and count only (review 6 R)", async () => {
  const logs: string[] = [];
  let clock = 0;
  let sides = 0;
  const deps = fakeDeps({ now: () => clock, side: () => (sides++, { close: async () => {} }) as never }, logs);
  // 100 never answers (a statement held up by a lock); 101 committed.
  const resolve = deps.st.resolve;
  deps.st = { ...deps.st, resolve: (s: SQL, xid: string, ...rest: unknown[]) => (xid === "100" ? new Promise(() => {}) : (resolve as Function)(s, xid, ...rest)) } as never;
  const u = createUnknown(deps);
  u.keep(tx("100"));
  u.keep(tx("101"));
  logs.length = 0;
  await u.ask();
  expect(u.pending()).toBe(1);
  expect(sides).toBe(2); // 101 was asked on a new connection: 100's statement may still hold the first
  const stays = "warn Postgres: transaction 100 (1 messages taken, 0 opened) stays of unknown outcome (no answer within 20 ms); asking again about once a second";
  expect(logs).toEqual([stays, "warn Postgres: transaction 101 had committed: gave back 1 messages taken and 0 opened"]);
  const still = (min: number) => `warn Postgres: transaction 100 (1 messages taken, 0 opened) is still of unknown outcome after ${min} min (no answer within 20 ms); asking again about once a second`;
  const at = async (ms: number) => {
    clock = ms;
    logs.length = 0;
    await u.ask();
    return [...logs];
  };
  expect(await at(1_000)).toEqual([]);
  expect(await at(60_000)).toEqual([still(1)]);
  expect(await at(61_000)).toEqual([]);
  expect(await at(300_000)).toEqual([]);
  expect(await at(600_000)).toEqual([still(10)]);
  expect(await at(3_599_000)).toEqual([]);
  expect(await at(3_600_000)).toEqual([still(60)]);
  expect(await at(7_199_000)).toEqual([]);
  expect(await at(7_300_000)).toEqual([still(121)]);
});

test("a clean stop asks once more, then says what is left: kept in the file, or lost with no data directory (review 6 R)", async () => {
  const home = mkdtempSync(join(tmpdir(), "mcq-unknown-"));
  const logs: string[] = [];
  const withFile = createUnknown({ ...fakeDeps({ home }, logs) });
  withFile.keep(tx("100"));
  withFile.keep(tx("200"));
  let batchDone = () => {};
  const batch = new Promise<void>((r) => (batchDone = r));
  const stopping = withFile.askLast(1000, batch);
  withFile.keep(tx("201")); // the last batch, kept before it settles: asked about too
  batchDone();
  await stopping;
  withFile.sayLeft();
  expect(withFile.pending()).toBe(1);
  expect(logs.filter((l) => l.includes("gave back")).length).toBe(2); // 100 and 201, in the last ask
  expect(logs.at(-1)).toBe(`warn Postgres: stopping with 1 batches of unknown outcome (transactions 200): kept in ${join(home, "postgres-unresolved.json")}; the next start on this data directory asks about them`);
  const none = createUnknown(fakeDeps({ identity: () => new Promise(() => {}) }, logs));
  none.keep(tx("300"));
  const t0 = performance.now();
  await none.askLast(50, Promise.resolve());
  none.sayLeft();
  expect(performance.now() - t0).toBeLessThan(1000);
  expect(logs.at(-1)).toBe("warn Postgres: stopping with 1 batches of unknown outcome (transactions 300) and no data directory: they are not asked about again; what they took, if they committed, stays taken");
  rmSync(home, { recursive: true });
});

if (havePostgres("unit postgres give-back leases")) {
  test("a give-back ends a lease only as its batch left it: the node's own later open of the message, committed before the statement, keeps its lease (review 6 R)", async () => {
    const schema = freshSchema("giveback");
    const sql = new SQL(PG_URL!, { max: 1 });
    try {
      await migrate(sql, schema);
      const st = statements(schema);
      const M = `${schema}.mcq_messages`;
      const ids: number[] = [];
      for (const body of ["a", "b", "c"]) {
        ids.push((await sql.unsafe(`INSERT INTO ${M} (queue, flags, created, expires, body) VALUES ('q', 0, 1, 0, $1) RETURNING id::float8 AS id`, [Buffer.from(body)]))[0].id);
      }
      const [a, b, c] = ids as [number, number, number];
      await sql.unsafe(`INSERT INTO ${schema}.mcq_counters (queue, node, total, open) VALUES ('q', 1, 3, 3)`);
      /** Node 1 opens `which` in a transaction of its own, committed or not; its xid. */
      const open = async (which: number[], commit = true) => {
        await sql.unsafe("BEGIN");
        await sql.unsafe(`UPDATE ${M} SET owner = 1, deliveries = deliveries + 1 WHERE id = ANY($1::int8[])`, [which]);
        const xid = (await sql.unsafe("SELECT pg_current_xact_id()::text AS xid"))[0].xid as string;
        await sql.unsafe(commit ? "COMMIT" : "ROLLBACK");
        return xid;
      };
      const landed = await open([a, b]); // the batch of unknown outcome: it landed
      await sql.unsafe(`UPDATE ${M} SET owner = NULL WHERE id = $1`, [a]); // a's lease ended (reaped, say)...
      await open([a]); // ...and a session of node 1 opened it again: the node's map may not show it yet
      const rolledBack = await open([c], false); // another batch, rolled back...
      await open([c]); // ...and c opened by node 1 since
      const owners = async () => (await sql.unsafe(`SELECT owner FROM ${M} ORDER BY id`)).map((r: { owner: number | null }) => r.owner);
      expect((await st.giveBack(sql, "s/1", 1, 1, [], [a, b], landed)).released).toBe(1); // b only
      expect((await st.giveBack(sql, "s/2", 1, 1, [], [c], rolledBack)).released).toBe(0);
      expect(await owners()).toEqual([1, null, 1]);
    } finally {
      await sql.unsafe(`DROP SCHEMA IF EXISTS ${schema} CASCADE`).catch(() => {});
      await sql.close();
    }
  });
}
