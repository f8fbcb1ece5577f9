/**
 * `mcq load --store` and `mcq dump --store` when things go wrong under them (review 7), with the
 * real CLI on a real Postgres (MCQ_TEST_PG): a connection that ends mid-load loads nothing (its
 * client does not carry on in autocommit on a new one); a COMMIT without an answer says that its
 * outcome is unknown, and a second load of the dump tells.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { SQL } from "bun";
import { dropSchemas, freshSchema, havePostgres, PG_URL, pgStoreUrl } from "../pg";
import { runCommand, serverCommand, set, startServer, stopAll, tempDir } from "./harness";

const schemas: string[] = [];
const fresh = () => {
  const schema = freshSchema("lsafe");
  schemas.push(schema);
  return { schema, url: pgStoreUrl(schema) };
};

/** The loads loadFromPipe started: a test that fails half-way leaves one waiting on its input, holding its lock. */
const piped: import("bun").Subprocess[] = [];

afterAll(async () => {
  for (const p of piped) p.kill("SIGKILL");
  await stopAll();
  await dropSchemas(schemas);
});

/** A whole dump with the id `id`: `n` messages m0.. in queue q. */
export function dumpLines(id: string, n: number, queue = "q"): string[] {
  const lines: object[] = [{ type: "dump", format: 2, id, created: 1, mcq: "1.0.0", lastId: n }, { type: "queue", name: queue, total: n, fetched: 0 }];
  for (let i = 0; i < n; i++) lines.push({ type: "message", queue, id: i + 1, flags: 0, created: 1, expires: 0, body: Buffer.from(`m${i}`).toString("base64") });
  lines.push({ type: "end", queues: 1, messages: n });
  return lines.map((l) => JSON.stringify(l) + "\n");
}

/** A whole dump of no message, in a file. */
async function emptyDump(): Promise<string> {
  const file = join(tempDir(), "empty.jsonl");
  await Bun.write(file, dumpLines("e0e0e0e0-2222-3333-4444-555555555555", 0).join(""));
  return file;
}

/** `mcq load --store url -` reading a pipe the test writes to; `env` is added to the tool's. */
export function loadFromPipe(url: string, env: Record<string, string> = {}) {
  const proc = Bun.spawn([...serverCommand(), "load", "--store", url, "-"], { stdin: "pipe", stdout: "pipe", stderr: "pipe", env: { ...process.env, ...env } });
  piped.push(proc);
  const done = Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited])
    .then(([stdout, stderr, code]) => ({ code, stdout, stderr }));
  return { proc, done };
}

/** Polls `probe` (a query about another process's progress, which cannot be awaited) until it gives a value. */
export async function until<T>(probe: () => Promise<T | undefined>, ms = 15_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error("gave up waiting");
    await Bun.sleep(20);
  }
}

/** Lines the load refuses (review 7 F8, F9, and due times past any delay), each as line 3 of a dump. */
const refused: [object, string][] = [
  [{ deliveries: 3_000_000_000 }, "bad due or deliveries"],
  [{ body: "QUJDR" }, "body is not whole base64 (cut short or altered)"],
  [{ body: "Q" }, "body is not whole base64 (cut short or altered)"],
  [{ due: 9007199254740991 }, "due is more than 31 days from now (a delay is at most 30 days)"],
];

/** `mcq load` of each refused line, into `store` (-H dir or --store url): exit 1 naming line 3; nothing loaded. */
async function refusesEach(store: string[]): Promise<void> {
  for (const [extra, why] of refused) {
    const file = join(tempDir(), "bad.jsonl");
    const lines = dumpLines("bad00000-2222-3333-4444-555555555555", 2);
    lines[2] = JSON.stringify({ ...JSON.parse(lines[2]!), ...extra }) + "\n";
    await Bun.write(file, lines.join(""));
    expect(await runCommand(["load", ...store, file])).toEqual({ code: 1, stdout: "", stderr: `mcq load: line 3: ${why}\n` });
  }
  const r = await runCommand(["dump", ...store]);
  expect([r.code, r.stderr]).toEqual([0, "dumped 0 messages\n"]);
}

test("a load into a data directory refuses deliveries past 2^31-1, base64 no bytes encode to, a due past any delay, naming the line", async () => {
  await refusesEach(["-H", tempDir()]);
}, 30_000);

if (havePostgres("mcq load --store safety")) {
  describe("mcq load --store, when its connection or its COMMIT fails", () => {
    const sql = new SQL(PG_URL!, { max: 2 });
    afterAll(() => sql.close({ timeout: 0 }));
    const count = async (schema: string, table: string) =>
      (await sql.unsafe(`SELECT to_regclass($1) IS NOT NULL AS t`, [`${schema}.${table}`]))[0].t
        ? Number((await sql.unsafe(`SELECT count(*) AS n FROM ${schema}.${table}`))[0].n) : 0;
    /** The backend of the load once it has sent a chunk of rows and waits for more input. */
    const sent = () => until<number>(async () => (await sql.unsafe(`SELECT pid FROM pg_stat_activity
      WHERE state = 'idle in transaction' AND query LIKE '%substring($8::bytea FROM off FOR len)%'`))[0]?.pid);

    test("its connection ended while it waits on stdin: exit 1, nothing loaded, no claim; the same dump then loads once", async () => {
      const { schema, url } = fresh();
      const id = "f1f1f1f1-2222-3333-4444-555555555555";
      const lines = dumpLines(id, 3000);
      const load = loadFromPipe(url);
      load.proc.stdin.write(lines.slice(0, 2500).join("")); // the first chunk (2000 rows) is sent, the rest waits
      await load.proc.stdin.flush();
      const pid = await sent();
      expect((await sql.unsafe("SELECT pg_terminate_backend($1, 10000) AS ended", [pid]))[0].ended).toBe(true);
      try {
        load.proc.stdin.write(lines.slice(2500).join(""));
        load.proc.stdin.end();
      } catch {
        // EPIPE: the load ended before reading the rest (seen once in a full run); what it said is checked below.
      }
      const r = await load.done;
      expect([r.code, r.stdout]).toEqual([1, ""]);
      expect(r.stderr).toMatch(/^mcq load: Postgres postgres:\/\/\S+: terminating connection due to administrator command; nothing loaded\n$/);
      expect([await count(schema, "mcq_messages"), await count(schema, "mcq_loads"), await count(schema, "mcq_counters")]).toEqual([0, 0, 0]);

      const file = join(tempDir(), "f1.jsonl");
      await Bun.write(file, lines.join(""));
      expect(await runCommand(["load", "--store", url, file])).toEqual({ code: 0, stdout: "", stderr: "loaded 3000 messages\n" });
      const again = await runCommand(["load", "--store", url, file]);
      expect([again.code, again.stderr.includes(`dump ${id} was loaded`)]).toEqual([1, true]);
      expect([await count(schema, "mcq_messages"), await count(schema, "mcq_loads")]).toEqual([3000, 1]);
    }, 60_000);

    test("a message stored while a load reads its input goes before the loaded ones, not among them", async () => {
      const { schema, url } = fresh();
      const node = await startServer(["--store", url]);
      const c = await node.connect();
      expect(await c.call(set("q", "B"))).toBe("STORED\r\n");
      const lines = dumpLines("f6f6f6f6-2222-3333-4444-555555555555", 3000);
      const load = loadFromPipe(url);
      load.proc.stdin.write(lines.slice(0, 2500).join("")); // the first chunk (2000 rows) is sent, the rest waits
      await load.proc.stdin.flush();
      await sent();
      expect(await c.call(set("q", "X"))).toBe("STORED\r\n");
      load.proc.stdin.write(lines.slice(2500).join(""));
      load.proc.stdin.end();
      expect(await load.done).toEqual({ code: 0, stdout: "", stderr: "loaded 3000 messages\n" });
      const order = (await sql.unsafe(`SELECT convert_from(body, 'UTF8') AS b FROM ${schema}.mcq_messages WHERE queue = 'q' ORDER BY id`))
        .map((r: { b: string }) => r.b);
      expect([order.length, order.slice(0, 3), order.at(-1)]).toEqual([3002, ["B", "X", "m0"], "m2999"]);
      expect(order.slice(2)).toEqual(Array.from({ length: 3000 }, (_, i) => `m${i}`));
      expect(await c.call("get q\r\nget q\r\nget q\r\n")).toBe("VALUE q 0 1\r\nB\r\nEND\r\nVALUE q 0 1\r\nX\r\nEND\r\nVALUE q 0 2\r\nm0\r\nEND\r\n");
      await node.kill();
    }, 60_000);

    test("a second load meanwhile is refused at once, naming the backend that holds the first", async () => {
      const { url } = fresh();
      const lines = dumpLines("b3b3b3b3-2222-3333-4444-555555555555", 2500);
      const first = loadFromPipe(url);
      first.proc.stdin.write(lines.slice(0, 2300).join(""));
      await first.proc.stdin.flush();
      const pid = await sent();
      const second = await runCommand(["load", "--store", url, await emptyDump()]);
      expect([second.code, second.stdout]).toEqual([1, ""]);
      expect(second.stderr).toMatch(new RegExp(`^mcq load: another mcq load into postgres://\\S+ is running \\(backend pid ${pid}: ` +
        `SELECT pg_terminate_backend\\(${pid}\\) ends it, loading nothing\\); nothing loaded\n$`));
      first.proc.stdin.write(lines.slice(2300).join(""));
      first.proc.stdin.end();
      expect(await first.done).toEqual({ code: 0, stdout: "", stderr: "loaded 2500 messages\n" });
    }, 60_000);

    test("a COMMIT without an answer: exit 1, the outcome unknown; loading the dump again tells that it landed", async () => {
      const { schema, url } = fresh();
      const file = join(tempDir(), "r2.jsonl");
      await Bun.write(file, dumpLines("0a0a0a0a-2222-3333-4444-555555555555", 1, "first").join(""));
      expect((await runCommand(["load", "--store", url, file])).code).toBe(0); // makes mcq_loads
      // The COMMIT takes 3 s (a synchronous standby that is slow to answer, say); the tool waits 1 s.
      await sql.unsafe(`CREATE FUNCTION ${schema}.slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(3); RETURN NULL; END $$`);
      await sql.unsafe(`CREATE CONSTRAINT TRIGGER slow AFTER INSERT ON ${schema}.mcq_loads DEFERRABLE INITIALLY DEFERRED
        FOR EACH ROW EXECUTE FUNCTION ${schema}.slow()`);
      const id = "2b2b2b2b-2222-3333-4444-555555555555";
      await Bun.write(file, dumpLines(id, 5).join(""));
      const load = loadFromPipe(url, { MCQ_TOOL_PG_TIMEOUT_MS: "1000" });
      load.proc.stdin.write(await Bun.file(file).text());
      load.proc.stdin.end();
      const r = await load.done;
      expect([r.code, r.stdout]).toEqual([1, ""]);
      expect(r.stderr).toMatch(/^mcq load: Postgres postgres:\/\/\S+: no answer to COMMIT \(no answer within 1000 ms \(COMMIT\)\): the outcome is unknown; loading the same dump again tells \(it is refused if it landed\)\n$/);
      await until(async () => ((await count(schema, "mcq_loads")) === 2 ? true : undefined));
      await sql.unsafe(`DROP TRIGGER slow ON ${schema}.mcq_loads`);
      const again = await runCommand(["load", "--store", url, file]);
      expect([again.code, again.stderr.startsWith(`mcq load: dump ${id} was loaded into `)]).toEqual([1, true]);
      expect(await count(schema, "mcq_messages")).toBe(6);
    }, 60_000);
  });

  test("a load into the Postgres store refuses the same lines, naming the line, before Postgres sees them", async () => {
    const { url } = fresh();
    expect((await runCommand(["load", "--store", url, await emptyDump()])).code).toBe(0);
    await refusesEach(["--store", url]);
  }, 30_000);

  test("a password given as ?password= (in any case) or ?sslpassword=, or holding a raw @, is never printed", async () => {
    const { protocol, host } = new URL(PG_URL!);
    const base = `${protocol}//postgres`;
    const cases: [string, string][] = [
      // Connects (the test server trusts 127.0.0.1), then finds no store in the schema.
      [`${base}@${host}/postgres?password=S3CRETpw&schema=nosuch`, `mcq dump: no mcq store in schema nosuch of ${base}@${host}/postgres\n`],
      [`${base}:S3CRET@pw@${host}/postgres?schema=nosuch`, `mcq dump: no mcq store in schema nosuch of ${base}@${host}/postgres\n`],
      // Cannot connect: the message names the host, not the password.
      [`${base}:S3CRET@pw@127.0.0.1:1/postgres`, `mcq dump: cannot open the Postgres store ${base}@127.0.0.1:1/postgres: `],
      [`${base}@${host}/postgres?sslpassword=S3CRETpw&application_name=x`, `mcq dump: cannot open the Postgres store ${base}@${host}/postgres?application_name=x: `],
      [`${base}@${host}/postgres?sslmode=require&password=S3CRETpw`, `mcq dump: cannot open the Postgres store ${base}@${host}/postgres?sslmode=require: `],
      // Bun.SQL takes PASSWORD= too (review 9).
      [`${base}@${host}/postgres?PASSWORD=S3CRETpw&schema=nosuch`, `mcq dump: no mcq store in schema nosuch of ${base}@${host}/postgres\n`],
    ];
    for (const [url, said] of cases) {
      const r = await runCommand(["dump", "--store", url]);
      expect([r.code, r.stdout, r.stderr.startsWith(said), r.stderr.includes("S3CRET"), r.stderr.includes("pw@")], r.stderr).toEqual([1, "", true, false, false]);
    }
  }, 30_000);

  describe("mcq dump --store", () => {
    const sql = new SQL(PG_URL!, { max: 1 });
    afterAll(() => sql.close({ timeout: 0 }));

    test("messages of a queue with no counter rows are dumped, under a queue line of zeros, and load on both stores", async () => {
      const { schema, url } = fresh();
      const node = await startServer(["--store", url]);
      const c = await node.connect();
      expect(await c.call(set("q", "a") + set("q", "b") + set("later/delay=600000", "c") + set("kept", "d")))
        .toBe("STORED\r\n".repeat(4));
      await node.kill();
      // What a `delete` racing a writer can leave (review 7 F4): messages whose queue has no counter row.
      await sql.unsafe(`DELETE FROM ${schema}.mcq_counters WHERE queue <> 'kept'`);
      const r = await runCommand(["dump", "--store", url]);
      expect([r.code, r.stderr]).toEqual([0, "dumped 4 messages\n"]);
      const lines = r.stdout.trimEnd().split("\n").map((l) => JSON.parse(l));
      expect(lines.filter((l) => l.type !== "message").slice(1)).toEqual([
        { type: "queue", name: "kept", total: 1, fetched: 0 },
        { type: "queue", name: "later", total: 0, fetched: 0 },
        { type: "queue", name: "q", total: 0, fetched: 0 },
        { type: "end", queues: 3, messages: 4 },
      ]);
      expect(lines.filter((l) => l.type === "message").map((l) => `${l.queue}:${Buffer.from(l.body, "base64")}`)).toEqual(["kept:d", "later:c", "q:a", "q:b"]);
      const file = join(tempDir(), "zeros.jsonl");
      await Bun.write(file, r.stdout);
      expect(await runCommand(["load", "--store", fresh().url, file])).toEqual({ code: 0, stdout: "", stderr: "loaded 4 messages\n" });
      expect(await runCommand(["load", "-H", tempDir(), file])).toEqual({ code: 0, stdout: "", stderr: "loaded 4 messages\n" });
      const one = await runCommand(["dump", "--store", url, "--queue", "q"]);
      expect([one.code, one.stderr]).toEqual([0, "dumped 2 messages\n"]);
    }, 30_000);

    test("a dump whose connection ends mid-way: exit 1, and no end line, so that no load takes what it wrote", async () => {
      const { url } = fresh();
      const file = join(tempDir(), "many.jsonl");
      await Bun.write(file, dumpLines("d1d1d1d1-2222-3333-4444-555555555555", 20_000).join(""));
      expect((await runCommand(["load", "--store", url, file])).code).toBe(0);
      // Nobody reads the dump's stdout yet: it stops on a full pipe, its transaction open.
      const proc = Bun.spawn([...serverCommand(), "dump", "--store", url], { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
      piped.push(proc);
      // Its first lines are out (a loaded machine found the backend idle between fetches before
      // any was written, and the dump's stdout was empty): read one chunk, then leave the pipe full again.
      const reader = proc.stdout.getReader();
      const first = (await reader.read()).value!;
      const pid = await until<number>(async () => (await sql.unsafe(`SELECT pid FROM pg_stat_activity
        WHERE state = 'idle in transaction' AND query LIKE 'SELECT false AS delayed%'`))[0]?.pid);
      expect((await sql.unsafe("SELECT pg_terminate_backend($1, 10000) AS ended", [pid]))[0].ended).toBe(true);
      const rest: Uint8Array[] = [first];
      for (let r = await reader.read(); !r.done; r = await reader.read()) rest.push(r.value);
      const [stdout, stderr, code] = [Buffer.concat(rest).toString(), await new Response(proc.stderr).text(), await proc.exited];
      expect(code).toBe(1);
      expect(stderr).toMatch(/^mcq dump: Postgres postgres:\/\/\S+: terminating connection due to administrator command\n$/);
      const last = JSON.parse(stdout.trimEnd().split("\n").at(-1)!);
      expect([last.type, stdout.includes('"type":"end"')]).toEqual(["message", false]);
    }, 60_000);

    test("bodies fetched in runs by size: a body over the budget, large and small ones, delayed ones with the same ids, all in order", async () => {
      const { url } = fresh();
      const sizes = [3, 5 << 20, 0, 3 << 20, 1 << 20, 7];
      const body = (i: number) => Buffer.alloc(sizes[i]!, 97 + i).toString("base64");
      const lines: object[] = [{ type: "dump", format: 2, id: "5f5f5f5f-2222-3333-4444-555555555555", created: 1, mcq: "1.0.0", lastId: 6 }];
      sizes.forEach((_, i) => lines.push({ type: "message", queue: "big", id: i + 1, flags: i, created: 1, expires: 0, body: body(i),
        ...(i % 2 === 1 ? { due: Date.now() + 600_000 + i } : {}) }));
      lines.push({ type: "end", queues: 0, messages: sizes.length });
      const file = join(tempDir(), "big.jsonl");
      await Bun.write(file, lines.map((l) => JSON.stringify(l) + "\n").join(""));
      expect(await runCommand(["load", "--store", url, file])).toEqual({ code: 0, stdout: "", stderr: "loaded 6 messages\n" });
      const r = await runCommand(["dump", "--store", url]);
      expect([r.code, r.stderr]).toEqual([0, "dumped 6 messages\n"]);
      const got = r.stdout.trimEnd().split("\n").map((l) => JSON.parse(l)).filter((l) => l.type === "message");
      // Waiting ones by id, then the delayed ones by due time.
      expect(got.map((m) => [m.flags, m.body === body(m.flags)])).toEqual([[0, true], [2, true], [4, true], [1, true], [3, true], [5, true]]);
    }, 30_000);
  });
}
