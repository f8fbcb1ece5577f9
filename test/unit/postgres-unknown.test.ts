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
    holds: () => false,
    gaveBack: async () => {},
    reason: (e) => ({ message: (e as Error).message }) as never,
    log: (l, m) => void logs.push(`${l} ${m}`),
    home: null,
    store: "S",
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
  await u.ask(); // #1: gives 100 back, hangs in its refresh, cut off after 20 ms
  expect(logs.at(-1)).toBe("warn Postgres: asking about 2 batches of unknown outcome: no answer within 20 ms; asking again later");
  await u.ask(); // #2: 100 was given back already; 200 still in progress
  expect(u.pending()).toBe(1);
  release(); // #1 resumes
  await new Promise((r) => setTimeout(r, 0));
  expect(u.pending()).toBe(1); // 200 is still kept (it was dropped by splice(-1, 1))
  expect(logs.filter((l) => l.includes("transaction 100"))).toEqual([
    // #2's log comes first: #1's comes after its refresh
    "warn Postgres: transaction 100 (1 messages taken, 0 opened) is asked about again once Postgres answers",
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

test("keeping a batch of 8 MiB of bodies takes well under a second, and the file reads back exactly; past the file's bound, memory only (review 6 F4)", () => {
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
  const t0 = performance.now();
  u.keep(big("300"));
  const ms = performance.now() - t0;
  expect(ms).toBeLessThan(1000); // was 243 ms per MiB (JSON of Buffers): about 2 s
  const file = join(home, "postgres-unresolved.json");
  expect(statSync(file).size).toBeLessThan(12 << 20);
  // Read back by a node started on the directory: the same bytes.
  const again = createUnknown(fakeDeps({ home }, logs));
  expect(again.pending()).toBe(1);
  const back = JSON.parse(readFileSync(file, "utf8")) as { taken: { body: string }[] }[];
  expect(back[0]!.taken.map((r, i) => Buffer.from(r.body, "base64").equals(bodies[i]!))).toEqual(Array(8).fill(true));
  // A second such batch would pass the bound: kept in memory only, and said so, without encoding it.
  const t1 = performance.now();
  u.keep(big("301"));
  expect(performance.now() - t1).toBeLessThan(250);
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
      const back = async (key: string, rows: Required<Row>[]) => (await st.giveBack(sql, key, 1, 1, rows, [])).back;
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
