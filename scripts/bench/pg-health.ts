/**
 * Table health on the Postgres store (issue 10): does mcq hold a transaction open across turns,
 * and do its tables and indexes come back close to their empty size under autovacuum once N
 * messages have passed through?
 *
 *   bun scripts/bench/pg-health.ts --store postgres://… [--messages 1000000] [--rounds 1]
 *       [--conns 50] [--depth 16] [--settle 300] [--every 5] [--backlog] [--tune] [--reindex]
 *       [--pg-reindex 60] [--under-load] [--json]
 *
 * It starts the real mcq (src/main.ts) on a fresh schema of the given Postgres, then mcbench
 * (scripts/bench/mcbench.c, built with cc) sends N pairs (set, then get of the same queue: N
 * messages in and out, 100 B each) and drains whatever is left; with --backlog it sets all N
 * first, then drains them (the table holds N messages at its peak). Meanwhile it samples
 * pg_stat_activity every 100 ms (the oldest transaction of any client backend but its own, and
 * the xid age of its xmin) and the sizes of mcq's tables every second (for the peak). After the
 * load it samples the sizes every --every seconds until autovacuum has run on mcq_messages, or
 * --settle seconds have passed. It prints the sizes at start (empty), peak, end of load and the
 * last sample, and the cluster's autovacuum settings. --rounds R does all that R times on the same
 * tables: whether the space vacuum freed is reused, or the files keep growing round after round.
 *
 * --tune applies per-table storage parameters before the load (TUNED; docs/performance.md,
 * "Postgres table health": they made no measurable difference to a steady flow). Cluster-wide settings (autovacuum_naptime) are the
 * operator's: they are printed, not changed. --reindex ends with REINDEX TABLE CONCURRENTLY
 * mcq_messages (vacuum frees index pages for reuse but does not shrink the files) and its effect.
 *
 * mcq runs with `--pg-reindex S` (its default, 60; 0: off) and -v: its own index upkeep
 * (src/store/postgres-reindex.ts). Every rebuild it logs is reported, with the set rate (the id
 * sequence, sampled every second) in the seconds it ran against the load's median; after the
 * settle, the script waits for two more of mcq's checks (the first may still count the load's
 * last writes) and samples the sizes again (scripts/bench/pg-health-reindex.ts); with
 * --under-load, one client does set/get pairs meanwhile, in 1 s runs of mcbench, and the runs a
 * rebuild overlapped are compared with the others.
 *
 * Exit codes: 0 measured (the figures say whether the table came back); 1 an error (mcq did not
 * start or exited, mcbench failed or counted errors, a query failed); 2 usage.
 */
import { SQL } from "bun";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterChecks, rebuilds } from "./pg-health-reindex";

const ROOT = join(import.meta.dir, "../..");

/** The per-table settings tried with --tune (docs/performance.md, "Postgres table health"). */
export const TUNED: Record<string, string> = {
  mcq_messages: "autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 10000, " +
    "autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 10000, autovacuum_vacuum_cost_delay = 0",
  mcq_counters: "fillfactor = 50, autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000, autovacuum_vacuum_cost_delay = 0",
  mcq_nodes: "fillfactor = 50, autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000, autovacuum_vacuum_cost_delay = 0",
};

export interface Options { store: string; backlog: boolean; reindex: boolean; pgReindex: number; underLoad: boolean; messages: number; rounds: number; conns: number; depth: number; settle: number; every: number; tune: boolean; json: boolean }

function usage(why: string): never {
  console.error(`pg-health: ${why}\nusage: bun scripts/bench/pg-health.ts --store postgres://… [--messages N] [--rounds R] [--conns C] [--depth D] ` +
    "[--settle SECONDS] [--every SECONDS] [--backlog] [--tune] [--reindex] [--pg-reindex SECONDS] [--under-load] [--json]");
  process.exit(2);
}

function parseArgs(argv: string[]): Options {
  const o: Options = { store: "", backlog: false, reindex: false, pgReindex: 60, underLoad: false, messages: 1_000_000, rounds: 1, conns: 50, depth: 16, settle: 300, every: 5, tune: false, json: false };
  const numbers = { "--messages": "messages", "--rounds": "rounds", "--conns": "conns", "--depth": "depth", "--settle": "settle", "--every": "every" } as const;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === "--tune") o.tune = true;
    else if (a === "--backlog") o.backlog = true;
    else if (a === "--reindex") o.reindex = true;
    else if (a === "--under-load") o.underLoad = true;
    else if (a === "--json") o.json = true;
    else if (a === "--pg-reindex") {
      o.pgReindex = Number(argv[++i]);
      if (!Number.isInteger(o.pgReindex) || o.pgReindex < 0) usage(`--pg-reindex needs a whole number of seconds (0: off), got ${JSON.stringify(argv[i])}`);
    } else if (a === "--store") o.store = argv[++i] ?? usage("--store needs a URL");
    else if (a in numbers) {
      const v = Number(argv[++i]);
      if (!Number.isInteger(v) || v < 1) usage(`${a} needs a positive integer, got ${JSON.stringify(argv[i])}`);
      o[numbers[a as keyof typeof numbers]] = v;
    } else usage(`unknown argument ${JSON.stringify(a)}`);
  }
  if (!/^postgres(ql)?:\/\//.test(o.store)) usage(`--store: expected a postgres:// URL, got ${JSON.stringify(o.store)}`);
  if (o.messages % o.conns !== 0) usage(`--messages (${o.messages}) must be a multiple of --conns (${o.conns}), so that every pair completes`);
  return o;
}

/** One relation's sizes (bytes) and, for tables, its vacuum statistics. */
export interface Rel { name: string; table: string; kind: "table" | "index" | "toast"; bytes: number; live?: number; dead?: number; autovacuums?: number; lastAutovacuum?: string | null }
export interface Sample { at: number; rels: Rel[]; total: number }

/** Every table, index and TOAST relation of the schema, with its size now. */
async function sample(sql: SQL, schema: string): Promise<Sample> {
  const rows: any[] = await sql.unsafe(
    `SELECT c.relname AS name, c.relname AS "table", 'table' AS kind, pg_relation_size(c.oid) AS bytes,
            s.n_live_tup AS live, s.n_dead_tup AS dead, s.autovacuum_count AS autovacuums, s.last_autovacuum::text AS "lastAutovacuum"
       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
      WHERE n.nspname = $1 AND c.relkind = 'r'
     UNION ALL
     SELECT ic.relname, t.relname, 'index', pg_relation_size(ic.oid), NULL, NULL, NULL, NULL
       FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_class t ON t.oid = i.indrelid
       JOIN pg_namespace n ON n.oid = t.relnamespace WHERE n.nspname = $1
     UNION ALL
     SELECT t.relname || ' (toast)', t.relname, 'toast', pg_total_relation_size(t.reltoastrelid), NULL, NULL, NULL, NULL
       FROM pg_class t JOIN pg_namespace n ON n.oid = t.relnamespace WHERE n.nspname = $1 AND t.relkind = 'r' AND t.reltoastrelid <> 0
      ORDER BY 2, 3 DESC, 1`, [schema]);
  const rels: Rel[] = rows.map((r) => ({
    name: r.name, table: r.table, kind: r.kind, bytes: Number(r.bytes),
    ...(r.kind === "table" ? { live: Number(r.live ?? 0), dead: Number(r.dead ?? 0), autovacuums: Number(r.autovacuums ?? 0), lastAutovacuum: r.lastAutovacuum } : {}),
  }));
  if (!rels.some((r) => r.name === "mcq_messages")) throw new Error(`schema ${schema} has no mcq_messages: did mcq create its schema?`);
  return { at: Date.now(), rels, total: rels.reduce((s, r) => s + r.bytes, 0) };
}

/**
 * The oldest open transaction (s) of any client backend but ours, what that backend ran last, and
 * the oldest xmin's age (xids), now. Backends shown `idle` are left out: a LISTEN backend reads its
 * notifications in a transaction of microseconds that pg_stat_activity shows as `idle` with the
 * xact_start of its last statement (the LISTEN, minutes ago; seen with psql alone in Postgres 15).
 */
async function transactions(sql: SQL): Promise<{ xactS: number; xminAge: number; idleInTx: number; who: string }> {
  const rows: any[] = await sql.unsafe(
    `SELECT coalesce(extract(epoch FROM clock_timestamp() - xact_start), 0) AS xact_s, coalesce(age(backend_xmin), 0) AS xmin_age,
            state, pid, left(regexp_replace(query, '\\s+', ' ', 'g'), 120) AS query
       FROM pg_stat_activity
      WHERE datname = current_database() AND backend_type = 'client backend' AND pid <> pg_backend_pid() AND state <> 'idle'
      ORDER BY xact_start NULLS LAST`);
  const oldest = rows[0];
  return {
    xactS: Number(oldest?.xact_s ?? 0),
    xminAge: Math.max(0, ...rows.map((r) => Number(r.xmin_age))),
    idleInTx: rows.filter((r) => String(r.state).startsWith("idle in transaction")).length,
    who: oldest === undefined ? "" : `pid ${oldest.pid} ${oldest.state}: ${oldest.query}`,
  };
}

/** The cluster settings that decide when autovacuum runs and how fast. */
async function clusterSettings(sql: SQL): Promise<Record<string, string>> {
  const rows: any[] = await sql.unsafe(
    `SELECT name, setting, unit FROM pg_settings WHERE name IN ('server_version', 'autovacuum', 'autovacuum_naptime',
       'autovacuum_vacuum_scale_factor', 'autovacuum_vacuum_threshold', 'autovacuum_vacuum_cost_delay',
       'autovacuum_vacuum_cost_limit', 'autovacuum_max_workers', 'vacuum_cost_limit', 'synchronous_commit') ORDER BY name`);
  return Object.fromEntries(rows.map((r) => [r.name, r.unit ? `${r.setting} ${r.unit}` : r.setting]));
}

async function tableOptions(sql: SQL, schema: string): Promise<Record<string, string[] | null>> {
  const rows: any[] = await sql.unsafe(
    `SELECT c.relname, c.reloptions FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname = $1 AND c.relkind = 'r' ORDER BY 1`, [schema]);
  return Object.fromEntries(rows.map((r) => [r.relname, r.reloptions]));
}

/** One line of mcq's log, with the time it came (ms). */
export interface LogLine { at: number; line: string }

/** Starts mcq on the store; rejects with its stderr if it does not come up. Its log lines gather in `log`. */
async function startMcq(storeUrl: string, home: string, pgReindex: number): Promise<{ port: number; proc: Bun.Subprocess<"ignore", "pipe", "pipe">; log: LogLine[] }> {
  const proc = Bun.spawn([process.execPath, join(ROOT, "src/main.ts"), "-l", "127.0.0.1", "-p", "0", "-H", home, "--store", storeUrl,
    "--pg-reindex", String(pgReindex), "-v"], { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  const log: LogLine[] = [];
  void (async () => {
    let rest = "";
    for await (const chunk of proc.stderr) {
      const lines = (rest + new TextDecoder().decode(chunk)).split("\n");
      rest = lines.pop()!;
      for (const line of lines) log.push({ at: Date.now(), line });
    }
  })();
  const reader = proc.stdout.getReader();
  let text = "";
  while (!/listening on .*:(\d+)/.test(text)) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`mcq did not start (exit ${await proc.exited}): ${log.map((l) => l.line).join("\n")}`);
    text += new TextDecoder().decode(value);
  }
  reader.releaseLock();
  void proc.stdout.pipeTo(new WritableStream()).catch(() => {});
  return { port: Number(/listening on .*:(\d+)/.exec(text)![1]), proc, log };
}

function buildMcbench(): string {
  const source = join(ROOT, "scripts/bench/mcbench.c");
  const bin = join(tmpdir(), `mcq-mcbench-health-${process.pid}`);
  if (Bun.which("cc") === null) throw new Error("mcbench needs a C compiler (cc) to build scripts/bench/mcbench.c");
  const built = Bun.spawnSync(["cc", "-O2", "-o", bin, source, "-lpthread"], { stderr: "pipe" });
  if (built.exitCode !== 0) throw new Error(`cc failed on mcbench.c: ${built.stderr.toString()}`);
  return bin;
}

/** mcbench runs not yet ended: killed if the run fails (mcq gone, it could wait for replies). */
const running = new Set<Bun.Subprocess>();

/** Runs mcbench; resolves with its RESULT fields, rejects if it failed or counted an error. */
async function mcbench(bin: string, port: number, args: string[]): Promise<Record<string, number>> {
  const proc = Bun.spawn([bin, "-p", String(port), "-s", "100", "-t", "2", "-k", "health", ...args], { stdout: "pipe", stderr: "pipe" });
  running.add(proc);
  const [out, err, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  running.delete(proc);
  const line = /^RESULT .*$/m.exec(out)?.[0];
  if (code !== 0 || line === undefined) throw new Error(`mcbench ${args.join(" ")} failed (exit ${code}): ${err.trim()} ${out.trim()}`);
  const fields = Object.fromEntries([...line.matchAll(/(\w+)=([\d.]+)/g)].map((m) => [m[1]!, Number(m[2])]));
  if (fields.errors! > 0) throw new Error(`mcbench counted ${fields.errors} errors: ${line}`);
  return fields;
}

const kb = (b: number) => `${Math.round(b / 1024).toLocaleString("en")} kB`;

export async function main(o: Options): Promise<void> {
  const schema = `mcq_health_${process.pid}`;
  const storeUrl = `${o.store}${o.store.includes("?") ? "&" : "?"}schema=${schema}`;
  const sql = new SQL(o.store, { max: 2 });
  const home = mkdtempSync(join(tmpdir(), "mcq-health-"));
  const bin = buildMcbench();
  let mcq: Awaited<ReturnType<typeof startMcq>> | null = null;
  let connected = false;
  try {
    const settings = await clusterSettings(sql);
    connected = true;
    mcq = await startMcq(storeUrl, home, o.pgReindex);
    const exited = mcq.proc.exited.then((c) => { throw new Error(`mcq exited (code ${c}) during the run`); });
    if (o.tune) for (const [t, s] of Object.entries(TUNED)) await sql.unsafe(`ALTER TABLE ${schema}.${t} SET (${s})`);
    const options = await tableOptions(sql, schema);
    const start = await sample(sql, schema);
    // Each round is another N messages through the same tables: the sizes after round 2 and on
    // say whether the space freed by vacuum is reused or the files keep growing.
    for (let round = 1; round <= o.rounds; round++) {
      const result = await Promise.race([exited, load(o, sql, schema, bin, mcq.port)]);
      const settled = await Promise.race([exited, settle(o, sql, schema, result.end)]);
      report(o, round, { settings, options, start, ...result, ...settled });
      rebuilds(o, mcq.log, result);
    }
    const pairs = (args: string[]) => mcbench(bin, mcq!.port, ["-m", "pair", ...args]);
    if (o.pgReindex > 0) await Promise.race([exited, afterChecks(o, mcq.log, start, () => sample(sql, schema), pairs)]);
    if (o.reindex) await Promise.race([exited, reindex(o, sql, schema)]);
  } finally {
    for (const p of running) p.kill();
    mcq?.proc.kill();
    await mcq?.proc.exited;
    if (connected) await sql.unsafe(`DROP SCHEMA IF EXISTS ${schema} CASCADE`).catch((e) => console.error(`pg-health: could not drop ${schema}: ${e.message}`));
    await sql.close();
    rmSync(home, { recursive: true, force: true });
    if (existsSync(bin)) rmSync(bin);
  }
}

/** The load: N pairs, then a drain; samples transactions (100 ms) and sizes (1 s) meanwhile. */
async function load(o: Options, sql: SQL, schema: string, bin: string, port: number) {
  let peak: Sample = await sample(sql, schema);
  /** The id sequence every second: sets per second. */
  const rates: { at: number; ids: number }[] = [];
  const tx = { xactS: 0, xminAge: 0, idleInTx: 0, samples: 0, who: "" };
  let sampling = true;
  let failure: unknown = null;
  const watch = (async () => {
    let lastSize = 0;
    while (sampling) {
      const t = await transactions(sql);
      if (t.xactS > tx.xactS) Object.assign(tx, { xactS: t.xactS, who: t.who });
      tx.xminAge = Math.max(tx.xminAge, t.xminAge);
      tx.idleInTx += t.idleInTx;
      tx.samples++;
      if (Date.now() - lastSize >= 1000) {
        lastSize = Date.now();
        const s = await sample(sql, schema);
        if (s.total > peak.total) peak = s;
        const [seq] = await sql.unsafe(`SELECT last_value FROM ${schema}.mcq_messages_id_seq`);
        rates.push({ at: Date.now(), ids: Number(seq.last_value) });
      }
      await Bun.sleep(100);
    }
  })().catch((e) => { failure = e; });
  const began = Date.now();
  let pairs: Record<string, number>, drain: Record<string, number>;
  try {
    const shape = o.backlog ? ["-m", "set", "-n", String(o.messages)] : ["-m", "pair", "-n", String(2 * o.messages)];
    pairs = await mcbench(bin, port, [...shape, "-c", String(o.conns), "-P", String(o.depth)]);
    drain = await mcbench(bin, port, ["-m", "drain", "-c", o.backlog ? String(o.conns) : "4", "-P", String(o.depth)]);
  } finally {
    sampling = false;
    await watch;
  }
  if (failure !== null) throw failure;
  // Every message stored must have come out exactly once, or the sizes below measure something else.
  if (pairs.hits! + drain.hits! !== o.messages) throw new Error(`${o.messages} messages stored but ${pairs.hits! + drain.hits!} taken`);
  const secs = (Date.now() - began) / 1000;
  const end = await sample(sql, schema);
  if (end.total > peak.total) peak = end;
  return { peak, end, tx, secs, pairs, drain, rates, began };
}

/**
 * After the load: samples every --every s until autovacuum has run on mcq_messages (if the load
 * left dead rows there), or --settle s. The small tables are reported, not waited for: their few
 * dead rows may stay below autovacuum's threshold for good.
 */
async function settle(o: Options, sql: SQL, schema: string, end: Sample) {
  const messages = (s: Sample) => s.rels.find((r) => r.name === "mcq_messages")!;
  const samples: Sample[] = [];
  const deadline = Date.now() + o.settle * 1000;
  let vacuumed = messages(end).dead === 0;
  while (!vacuumed && Date.now() < deadline) {
    await Bun.sleep(o.every * 1000);
    const s = await sample(sql, schema);
    samples.push(s);
    vacuumed = messages(s).autovacuums! > messages(end).autovacuums!;
    if (!o.json) console.error(`pg-health: +${Math.round((s.at - end.at) / 1000)} s total ${kb(s.total)}, mcq_messages ${kb(relBytes(s, "mcq_messages"))}` +
      ` (dead rows ${messages(s).dead})${vacuumed ? ", autovacuum has run" : ""}`);
  }
  return { after: samples.at(-1) ?? end, settleSecs: ((samples.at(-1)?.at ?? end.at) - end.at) / 1000, vacuumed };
}

/** --reindex: what REINDEX CONCURRENTLY (no lock that stops mcq) gives the indexes back. */
async function reindex(o: Options, sql: SQL, schema: string): Promise<void> {
  const before = await sample(sql, schema);
  const began = Date.now();
  await sql.unsafe(`REINDEX TABLE CONCURRENTLY ${schema}.mcq_messages`);
  const after = await sample(sql, schema);
  const indexes = (s: Sample) => s.rels.filter((r) => r.table === "mcq_messages" && r.kind === "index");
  const line = indexes(before).map((r) => `${r.name} ${kb(r.bytes)} -> ${kb(indexes(after).find((x) => x.name === r.name)?.bytes ?? 0)}`);
  if (o.json) console.log(JSON.stringify({ reindex: { ms: Date.now() - began, before: before.total, after: after.total } }));
  else console.log(`\nREINDEX TABLE CONCURRENTLY mcq_messages (${Date.now() - began} ms): ${line.join(", ")}; all of mcq's relations ${kb(before.total)} -> ${kb(after.total)}`);
}

/** A table's bytes with its indexes and TOAST. */
const relBytes = (s: Sample, table: string) => s.rels.filter((r) => r.table === table).reduce((n, r) => n + r.bytes, 0);

function report(o: Options, round: number, r: {
  settings: Record<string, string>; options: Record<string, string[] | null>; start: Sample; peak: Sample; end: Sample; after: Sample;
  tx: { xactS: number; xminAge: number; idleInTx: number; samples: number; who: string }; secs: number; pairs: Record<string, number>;
  drain: Record<string, number>; settleSecs: number; vacuumed: boolean;
}): void {
  const names = r.start.rels.map((x) => x.name);
  const at = (s: Sample, name: string) => s.rels.find((x) => x.name === name)?.bytes ?? 0;
  if (o.json) {
    const rels = names.map((n) => ({ name: n, start: at(r.start, n), peak: at(r.peak, n), end: at(r.end, n), after: at(r.after, n) }));
    console.log(JSON.stringify({ ...o, store: undefined, round, ...r, rels }, null, 2));
    return;
  }
  console.log(`${round > 1 ? "\n" : ""}pg-health round ${round}/${o.rounds}: ${o.messages.toLocaleString("en")} messages of 100 B (mcbench ${o.backlog ? "set" : "pair"} ${o.conns}x${o.depth}, then drain) in ${r.secs.toFixed(0)} s` +
    ` (${Math.round((2 * o.messages) / r.secs).toLocaleString("en")} ops/s); gets hit ${r.pairs.hits} + ${r.drain.hits} drained`);
  console.log(`cluster: ${Object.entries(r.settings).map(([k, v]) => `${k}=${v}`).join(", ")}`);
  console.log(`table options: ${Object.entries(r.options).map(([k, v]) => `${k}=${v === null ? "default" : v.join(",")}`).join("; ")}`);
  console.log(`transactions (${r.tx.samples} samples of pg_stat_activity, every 100 ms): oldest open transaction ${(r.tx.xactS * 1000).toFixed(0)} ms (${r.tx.who}),` +
    ` oldest xmin ${r.tx.xminAge} xids old, idle-in-transaction seen ${r.tx.idleInTx} times`);
  console.log(`\n${"relation".padEnd(30)}${"empty".padStart(12)}${"peak".padStart(12)}${"end of load".padStart(14)}${`+${r.settleSecs.toFixed(0)} s`.padStart(12)}`);
  for (const n of names) {
    console.log(`${n.padEnd(30)}${kb(at(r.start, n)).padStart(12)}${kb(at(r.peak, n)).padStart(12)}${kb(at(r.end, n)).padStart(14)}${kb(at(r.after, n)).padStart(12)}`);
  }
  console.log(`${"all of mcq's relations".padEnd(30)}${kb(r.start.total).padStart(12)}${kb(r.peak.total).padStart(12)}${kb(r.end.total).padStart(14)}${kb(r.after.total).padStart(12)}`);
  const tables = r.after.rels.filter((x) => x.kind === "table");
  console.log(`\nlast sample: ${tables.map((t) => `${t.name} live ${t.live} dead ${t.dead} autovacuums ${t.autovacuums} (last ${t.lastAutovacuum ?? "never"})`).join("; ")}`);
  console.log(r.vacuumed ? `autovacuum ran on mcq_messages within ${r.settleSecs.toFixed(0)} s of the end of the load`
    : `autovacuum had not run on mcq_messages ${r.settleSecs.toFixed(0)} s after the end of the load (--settle ${o.settle})`);
}

if (import.meta.main) {
  await main(parseArgs(process.argv.slice(2))).catch((e) => {
    console.error(`pg-health: ${e instanceof Error ? e.message : String(e)}`);
    process.exit(1);
  });
}
