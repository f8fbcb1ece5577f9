/**
 * `mcq dump --store` and `mcq load --store` (issue 12: a dump carries due times, delivery counts
 * and tokens, on both stores), with real processes on a real Postgres (MCQ_TEST_PG, test/pg.ts):
 * SQLite -> Postgres -> SQLite gives back the same messages and counters; a dump taken while a
 * node serves is one snapshot; a load wakes a get waiting on a node; a dump is loaded once; a dump
 * cut short loads nothing; a store that cannot be reached is exit 1, as for `mcq redrive --store`.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { SQL } from "bun";
import { dropSchemas, freshSchema, havePostgres, PG_URL, pgStoreUrl } from "../pg";
import { queueStats, runCommand, set, startServer, stopAll, tempDir, value, type Client } from "./harness";

const schemas: string[] = [];
const store = () => {
  const schema = freshSchema("dump");
  schemas.push(schema);
  return pgStoreUrl(schema);
};

afterAll(async () => {
  await stopAll();
  await dropSchemas(schemas);
});

const binary = String.fromCharCode(...Array.from({ length: 256 }, (_, i) => i));
type Line = Record<string, unknown> & { type: string };
const parse = (text: string): Line[] => text.trimEnd().split("\n").map((l) => JSON.parse(l));

/** A dump's lines without what differs between stores: the header's dump id and time, and message ids. */
const comparable = (text: string) =>
  parse(text).map((l) => {
    if (l.type === "dump") return { type: "dump", format: l.format };
    if (l.type === "message") {
      const { id: _, ...rest } = l;
      return rest;
    }
    return l;
  });

async function toFile(text: string): Promise<string> {
  const file = join(tempDir(), "dump.jsonl");
  await Bun.write(file, text);
  return file;
}

async function dumpOk(args: string[]): Promise<string> {
  const r = await runCommand(["dump", ...args]);
  expect([r.code, r.stderr]).toEqual([0, `dumped ${parse(r.stdout).filter((l) => l.type === "message").length} messages\n`]);
  return r.stdout;
}

/** Three dumps of `url`, each checked to be one snapshot of queues s0..s2 (s2 is never read). */
async function snapshots(url: string): Promise<void> {
  for (let round = 0; round < 3; round++) {
    const lines = parse(await dumpOk(["--store", url]));
    const messages = lines.filter((l) => l.type === "message");
    expect(lines.at(-1)).toEqual({ type: "end", queues: 3, messages: messages.length });
    expect(new Set(messages.map((m) => m.id)).size).toBe(messages.length);
    const bodies = (q: unknown) => messages.filter((m) => m.queue === q).map((m) => Buffer.from(m.body as string, "base64").toString());
    for (const q of lines.filter((l) => l.type === "queue")) {
      // What the snapshot holds of the queue is what its counters say it held then, in order.
      const held = bodies(q.name).map((b) => Number(b.slice(1)));
      expect(held.length).toBe((q.total as number) - (q.fetched as number));
      expect(held).toEqual([...held].sort((x, y) => x - y));
    }
    // s2 is never read: it holds exactly the first `total` of its sets, none missing, none twice.
    const total = lines.find((l) => l.type === "queue" && l.name === "s2")!.total as number;
    const expected: string[] = [];
    for (let k = 0; expected.length < total; k++) if ((k % 50) % 3 === 2) expected.push(`m${k}`);
    expect(bodies("s2")).toEqual(expected);
  }
}

if (havePostgres("mcq dump/load --store")) {
  describe("mcq dump and load --store", () => {
    test("SQLite -> Postgres -> SQLite keeps flags, bodies, deliveries, due times, tokens and counters", async () => {
      // A SQLite data directory with every kind of line: plain, binary, delayed, opened once, dead letters, tokens.
      const sqlite = await startServer(["--max-deliveries", "2"]);
      const c = await sqlite.connect();
      expect(await c.call(set("q", "first", 3) + set("q", binary, 4294967295) + "set q/delay=600000 0 0 5\r\nlater\r\n" +
        "set q/id=tok1 7 0 2\r\nt1\r\nset q/id=tok1 7 0 2\r\nt1\r\n" + set("p", "poison") + set("p", "opened"))).toBe("STORED\r\n".repeat(7));
      for (let i = 0; i < 2; i++) expect(await c.call("get p/open\r\nget p/abort\r\n")).toBe(value("p/open", "poison") + "END\r\nEND\r\n");
      expect(await c.call("get p/open\r\nget p/abort\r\nget q\r\n")).toBe(value("p/open", "opened") + "END\r\nEND\r\n" + value("q", "first", 3) + "END\r\n");
      expect(await sqlite.kill()).toBe(0);
      const fromSqlite = await dumpOk(["-H", sqlite.home]);
      const lines = parse(fromSqlite);
      expect(lines.filter((l) => l.type === "message").map((l) => [l.queue, l.deliveries ?? 0, typeof l.due])).toEqual([
        ["p", 1, "undefined"], ["p.dlq", 0, "undefined"], ["q", 0, "undefined"], ["q", 0, "undefined"], ["q", 0, "number"],
      ]);
      expect(lines.filter((l) => l.type === "token").map((l) => l.token)).toEqual(["tok1"]);

      const url = store();
      expect(await runCommand(["load", "--store", url, await toFile(fromSqlite)])).toEqual({ code: 0, stdout: "", stderr: "loaded 5 messages\n" });
      const fromPostgres = await dumpOk(["--store", url]);
      expect(comparable(fromPostgres)).toEqual(comparable(fromSqlite));
      const home = join(tempDir(), "back");
      expect(await runCommand(["load", "-H", home, await toFile(fromPostgres)])).toEqual({ code: 0, stdout: "", stderr: "loaded 5 messages\n" });
      expect(comparable(await dumpOk(["-H", home]))).toEqual(comparable(fromSqlite));

      // A node on the loaded store serves them, with the counters summed over its rows and the load's.
      const node = await startServer(["--store", url, "--max-deliveries", "2"]);
      const n = await node.connect();
      expect(await queueStats(n, "q")).toMatchObject({ items: 3, total: 4, fetched: 1, delayed: 1, deduplicated: 1 });
      expect(await queueStats(n, "p")).toMatchObject({ items: 1, total: 2, fetched: 1, dead_lettered: 1 });
      expect(await n.call("set q/id=tok1 0 0 1\r\nx\r\nget q\r\nget q\r\nget q\r\n")).toBe(
        "STORED\r\n" + value("q", binary, 4294967295) + "END\r\n" + value("q", "t1", 7) + "END\r\nEND\r\n");
      // "opened" was opened once: a second open and abort sends it to p.dlq (max 2).
      expect(await n.call("get p/open\r\nget p/abort\r\nget p.dlq\r\nget p.dlq\r\n")).toBe(
        value("p/open", "opened") + "END\r\nEND\r\n" + value("p.dlq", "poison") + "END\r\n" + value("p.dlq", "opened") + "END\r\n");
      expect(await queueStats(n, "q")).toMatchObject({ items: 1, total: 4, fetched: 3, delayed: 1, deduplicated: 2 });
      // A message held open is dumped as a waiting one, with its delivery.
      expect(await n.call(set("o", "held") + "get o/open\r\n")).toBe("STORED\r\n" + value("o/open", "held") + "END\r\n");
      expect(parse(await dumpOk(["--store", url, "--queue", "o"])).slice(1).map((l) => (l.type === "message" ? { ...l, created: 0, id: 0 } : l))).toEqual([
        { type: "queue", name: "o", total: 1, fetched: 0 },
        { type: "message", queue: "o", id: 0, flags: 0, created: 0, expires: 0, body: "aGVsZA==", deliveries: 1 },
        { type: "end", queues: 1, messages: 1 },
      ]);
      await node.kill();
    });

    test("a dump taken while a node serves sets and gets is one snapshot: each message once, counters matching", async () => {
      const url = store();
      const node = await startServer(["--store", url]);
      const [producer, consumer] = [await node.connect(), await node.connect()];
      let stop = false;
      let sent = 0;
      let warm: () => void = () => {};
      const warmedUp = new Promise<void>((ok) => (warm = ok));
      const producing = (async () => {
        while (!stop) {
          const batch = Array.from({ length: 50 }, (_, i) => set(`s${i % 3}`, `m${sent + i}`)).join("");
          expect(await producer.call(batch)).toBe("STORED\r\n".repeat(50));
          sent += 50;
          if (sent >= 300) warm();
        }
      })();
      const consuming = (async () => {
        while (!stop) await consumer.call("get s0\r\nget s1\r\n");
      })();
      await warmedUp;
      try {
        await snapshots(url);
      } finally {
        stop = true; // a failed check must not leave the loops running
        await Promise.all([producing, consuming]);
      }
      await node.kill();
    });

    test("a load wakes a get waiting on a node; the counters are exact at once; a second load is refused, --append adds again", async () => {
      const url = store();
      const node = await startServer(["--store", url]);
      const [c, w] = [await node.connect(), await node.connect()];
      expect(await c.call(set("w", "already"))).toBe("STORED\r\n");
      expect(await c.call("get w\r\n")).toBe(value("w", "already") + "END\r\n");
      const waiting = w.call("get w/t=5000\r\n");
      while (!(await c.call("stats\r\n")).includes("STAT waiters 1\r\n")); // asked again until the get waits
      const file = join(tempDir(), "w.jsonl");
      const header = { type: "dump", format: 2, id: "11111111-2222-3333-4444-555555555555", created: 1, mcq: "1.0.0", lastId: 9 };
      const msg = (body: string) => ({ type: "message", queue: "w", id: 9, flags: 5, created: 1, expires: 0, body: Buffer.from(body).toString("base64") });
      await Bun.write(file, [header, { type: "queue", name: "w", total: 10, fetched: 8, deduplicated: 3 }, msg("loaded1"), msg("loaded2"),
        { type: "end", queues: 1, messages: 2 }].map((l) => JSON.stringify(l)).join("\n") + "\n");
      const started = Date.now();
      expect(await runCommand(["load", "--store", url, file])).toEqual({ code: 0, stdout: "", stderr: "loaded 2 messages\n" });
      expect(await waiting).toBe(value("w/t=5000", "loaded1", 5) + "END\r\n");
      expect(Date.now() - started).toBeLessThan(4000);
      expect(await queueStats(c, "w")).toMatchObject({ items: 1, total: 11, fetched: 10, deduplicated: 3 });

      const again = await runCommand(["load", "--store", url, file]);
      expect([again.code, again.stdout]).toEqual([1, ""]);
      expect(again.stderr).toMatch(/^mcq load: dump 11111111-2222-3333-4444-555555555555 was loaded into postgres:\/\/\S+ on \S+Z; nothing loaded \(--append loads it again\)\n$/);
      expect(await queueStats(c, "w")).toMatchObject({ items: 1, total: 11 });
      expect(await runCommand(["load", "--store", url, "--append", file])).toEqual({ code: 0, stdout: "", stderr: "loaded 2 messages\n" });
      expect(await queueStats(c, "w")).toMatchObject({ items: 3, total: 21, fetched: 18, deduplicated: 6 });
      // Loaded after what was queued, in the file's order; a set after the load comes after them.
      expect(await c.call(set("w", "after") + "get w\r\nget w\r\nget w\r\nget w\r\n")).toBe("STORED\r\n" + value("w", "loaded2", 5) + "END\r\n" +
        value("w", "loaded1", 5) + "END\r\n" + value("w", "loaded2", 5) + "END\r\n" + value("w", "after") + "END\r\n");
      await node.kill();
    });

    test("a dump cut short, or with a bad line, loads nothing; a loaded delayed message comes once due", async () => {
      const url = store();
      const due = Date.now() + 1500;
      const lines = [
        { type: "dump", format: 2, id: "aaaaaaaa-2222-3333-4444-555555555555", created: 1, mcq: "1.0.0", lastId: 2 },
        { type: "queue", name: "d", total: 2, fetched: 0 },
        { type: "message", queue: "d", id: 1, flags: 0, created: 1, expires: 0, body: "bm93", deliveries: 2 },
        { type: "message", queue: "d", id: 2, flags: 0, created: 1, expires: 0, body: "bGF0ZXI=", due },
        { type: "token", queue: "d", token: "k", until: Date.now() + 600_000 },
        { type: "end", queues: 1, messages: 2 },
      ].map((l) => JSON.stringify(l));
      const cut = await runCommand(["load", "--store", url, await toFile(lines.slice(0, -1).join("\n") + "\n")]);
      expect(cut).toEqual({ code: 1, stdout: "", stderr: "mcq load: the dump ends at line 5 without its end line (cut short?); nothing loaded\n" });
      const bad = await runCommand(["load", "--store", url, await toFile([...lines.slice(0, 3), "{", ...lines.slice(3)].join("\n"))]);
      expect(bad).toEqual({ code: 1, stdout: "", stderr: "mcq load: line 4: not JSON\n" });
      expect(parse(await dumpOk(["--store", url])).slice(1)).toEqual([{ type: "end", queues: 0, messages: 0 }]);
      // The whole dump loads (its id was not recorded by the failed loads), and a node sees it all.
      const node = await startServer(["--store", url]);
      const c = await node.connect();
      expect(await runCommand(["load", "--store", url, await toFile(lines.join("\n"))])).toEqual({ code: 0, stdout: "", stderr: "loaded 2 messages\n" });
      expect(await c.call("set d/id=k 0 0 1\r\nx\r\nget d/open\r\n")).toBe("STORED\r\n" + value("d/open", "now") + "END\r\n");
      expect(await c.call("get d/t=5000\r\n")).toBe(value("d/t=5000", "later") + "END\r\n");
      expect(Date.now()).toBeGreaterThanOrEqual(due - 50);
      expect(await queueStats(c, "d")).toMatchObject({ items: 1, open: 1, total: 2, delayed: 0, deduplicated: 1 });
      await node.kill();
    });

    test("a bad URL, a Postgres that is down, or -H with --store: a clear message and exit 1, without the password", async () => {
      const started = Date.now();
      const down = await runCommand(["dump", "--store", "postgres://u:secret@127.0.0.1:1/db"]);
      expect([down.code, down.stdout, down.stderr.startsWith("mcq dump: cannot open the Postgres store postgres://u@127.0.0.1:1/db: "),
        down.stderr.includes("secret")]).toEqual([1, "", true, false]);
      const file = await toFile('{"type":"end","queues":0,"messages":0}\n');
      const downLoad = await runCommand(["load", "--store", "postgres://u:secret@127.0.0.1:1/db", file]);
      expect([downLoad.code, downLoad.stderr.startsWith("mcq load: cannot open the Postgres store postgres://u@127.0.0.1:1/db: "),
        downLoad.stderr.includes("secret")]).toEqual([1, true, false]);
      expect(Date.now() - started).toBeLessThan(15_000);
      expect(await runCommand(["dump", "--store", "mysql://x"])).toEqual({
        code: 1, stdout: "", stderr: "mcq dump: cannot open the Postgres store the --store URL: --store: not a postgres:// URL\n" });
      expect(await runCommand(["load", "-H", tempDir(), "--store", store(), file])).toEqual({
        code: 1, stdout: "", stderr: "mcq load: -H and --store name two stores; give one (-H: a SQLite data directory, --store: Postgres)\n" });
      const empty = store();
      expect(await runCommand(["dump", "--store", empty])).toEqual({
        code: 1, stdout: "", stderr: `mcq dump: no mcq store in schema ${schemas.at(-1)} of ${process.env.MCQ_TEST_PG}\n` });
      const url = store();
      expect((await runCommand(["load", "--store", url, file])).code).toBe(0);
      expect(await runCommand(["dump", "--store", url, "--queue", "nosuch"])).toEqual({
        code: 1, stdout: "", stderr: `mcq dump: no queue nosuch in ${process.env.MCQ_TEST_PG}\n` });
    });

    test("a dump or a load uses the schema as it is: an older one (nodes of that version beside it) is not upgraded; one it cannot read is refused", async () => {
      const url = store();
      const schema = schemas.at(-1)!;
      const file = await toFile('{"type":"end","queues":0,"messages":0}\n');
      expect((await runCommand(["load", "--store", url, file])).code).toBe(0);
      const sql = new SQL(PG_URL!, { max: 1 });
      const version = async () => Number((await sql.unsafe(`SELECT version FROM ${schema}.mcq_version`))[0].version);
      try {
        await sql.unsafe(`UPDATE ${schema}.mcq_version SET version = 3`);
        const dumped = await runCommand(["dump", "--store", url]);
        expect([dumped.code, parse(dumped.stdout).at(-1)]).toEqual([0, { type: "end", queues: 0, messages: 0 }]);
        expect(await version()).toBe(3); // before: 5, upgraded under the older nodes
        // Nor does a load: it needs only what version 3 has.
        const one = await toFile([{ type: "message", queue: "v3", flags: 0, created: 1, expires: 0, body: "djM=" }].map((l) => JSON.stringify(l)).join("\n"));
        expect((await runCommand(["load", "--store", url, one])).code).toBe(0);
        expect(await version()).toBe(3);
        for (const [v, why] of [[2, "a node of this mcq brings it up to date when it starts"], [99, "upgrade mcq"]] as const) {
          await sql.unsafe(`UPDATE ${schema}.mcq_version SET version = ${v}`);
          for (const tool of ["dump", "load"]) {
            expect(await runCommand([tool, "--store", url, ...(tool === "load" ? [one] : [])])).toEqual({ code: 1, stdout: "",
              stderr: `mcq ${tool}: the schema ${schema} of ${process.env.MCQ_TEST_PG} is version ${v}; this mcq reads 3 to 6 (${why})\n` });
          }
        }
      } finally {
        await sql.close();
      }
    });
  });
}

describe("a store that never answers", () => {
  test("a Postgres that accepts the connection and then says nothing: exit 1, bounded, not a hang", async () => {
    const silent = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
    try {
      const started = Date.now();
      const r = await runCommand(["dump", "--store", `postgres://u:secret@127.0.0.1:${silent.port}/db`], 30_000);
      expect([r.code, r.stdout, r.stderr.startsWith(`mcq dump: cannot open the Postgres store postgres://u@127.0.0.1:${silent.port}/db: `),
        r.stderr.includes("secret")]).toEqual([1, "", true, false]);
      expect(Date.now() - started).toBeLessThan(20_000);
    } finally {
      silent.stop(true);
    }
  });
});

describe("--help", () => {
  test("mcq --help, mcq dump --help and mcq load --help show --store", async () => {
    for (const tool of ["dump", "load"]) {
      const r = await runCommand([tool, "--help"]);
      expect([r.code, r.stdout.includes("--store <url>")]).toEqual([0, true]);
    }
    const main = await runCommand(["--help"]);
    expect(main.stdout.split("\n").filter((l) => /^ {2}(dump|load) /.test(l))).toEqual([
      "  dump    write a data directory's queues (or --store's) as a versioned dump",
      "  load    add a dump's queues to a data directory or --store (once per dump)",
    ]);
  });
});
