/**
 * `bun run bench --store postgres://…`: mcq on Postgres against mcq on SQLite (--sync full) and
 * memcached, in the same run: mcbench pair, 100-byte messages, at 1x1, 50x1 and 50x16, the
 * servers alternating from run to run, medians. Then the scale-out figure: two mcq nodes on one
 * Postgres against one node, at 50x16 (two mcbench at once, 25 connections each, one per node).
 *
 * Targets: 50x16 on Postgres at least 0.3x SQLite full; two nodes at least
 * 1.3x one, informational on a 2-core machine where Postgres, mcq and mcbench share the CPU.
 * Each mcq on Postgres gets a schema of its own, dropped at the end.
 */
import { SQL } from "bun";

interface Server {
  name: string;
  port: number;
  stop(): Promise<void>;
}

export interface BenchTools {
  startMcq(name: string, args: string[]): Promise<Server>;
  startPeer(name: string, proto: "memcache", command: (port: number, dir: string) => string[]): Promise<Server | null>;
  mcbench: string | null;
  runs: number;
  secs: number;
  json: boolean;
  progress(line: string): void;
}

const LOADS = [
  { name: "pair 1x1", conns: 1, depth: 1 },
  { name: "pair 50x1", conns: 50, depth: 1 },
  { name: "pair 50x16", conns: 50, depth: 16 },
];

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const ratio = (a: number, b: number) => (b > 0 ? Math.round((a / b) * 100) / 100 : 0);

/** One mcbench pair run; resolves with its ops/s (0 if it reported none). */
async function pair(bin: string, port: number, conns: number, depth: number, secs: number): Promise<number> {
  const proc = Bun.spawn([bin, "-p", String(port), "-m", "pair", "-s", "100", "-c", String(conns), "-P", String(depth), "-d", String(secs),
    "-t", "2"], { stdout: "pipe", stderr: "ignore" });
  const out = await new Response(proc.stdout).text();
  await proc.exited;
  return Number(/ops_s=(\d+)/.exec(out)?.[1] ?? 0);
}

export async function postgresBench(storeUrl: string, t: BenchTools): Promise<void> {
  if (!/^postgres(ql)?:\/\//.test(storeUrl)) throw new Error(`--store: expected a postgres:// URL, got ${JSON.stringify(storeUrl)}`);
  if (t.mcbench === null) throw new Error("bench --store needs mcbench, built from scripts/bench/mcbench.c with cc: no C compiler found");
  const bin = t.mcbench;
  const schemas: string[] = [];
  const schemaUrl = () => {
    const schema = `mcq_bench_${process.pid}_${schemas.length}`;
    schemas.push(schema);
    return `${storeUrl}${storeUrl.includes("?") ? "&" : "?"}schema=${schema}`;
  };
  const servers = (await Promise.all([
    t.startMcq("mcq postgres", ["--store", schemaUrl()]),
    t.startMcq("mcq sqlite full", ["--sync", "full"]),
    t.startPeer("memcached", "memcache", (p) => ["memcached", "-t", "2", "-U", "0", "-l", "127.0.0.1", "-p", String(p), "-m", "1024", "-u", "root"]),
  ])).filter((s): s is Server => s !== null);
  const sql = new SQL(storeUrl, { max: 1 });
  /**
   * Every get deletes a row: a run leaves its dead rows and index entries to the next, which walks
   * them (measured: two nodes after one node on the same tables ran 0.4-0.6x, on fresh ones
   * 0.7-0.9x). So each measurement on Postgres starts from vacuumed tables, as autovacuum would
   * leave them between bursts.
   */
  const vacuum = async () => {
    for (const schema of schemas) {
      const tables = (await sql.unsafe(`SELECT tablename FROM pg_tables WHERE schemaname = $1`, [schema])) as { tablename: string }[];
      for (const { tablename } of tables) await sql.unsafe(`VACUUM ${schema}."${tablename}"`);
    }
  };
  const ops = new Map<string, number[]>();
  let nodes: { one: number[]; two: number[] } = { one: [], two: [] };
  try {
    for (let run = 0; run < t.runs; run++) {
      for (const s of run % 2 === 0 ? servers : [...servers].reverse()) {
        for (const l of LOADS) {
          t.progress(`run ${run + 1}: ${s.name}, ${l.name}`);
          const key = `${l.name}|${s.name}`;
          if (s.name === "mcq postgres") await vacuum();
          ops.set(key, [...(ops.get(key) ?? []), await pair(bin, s.port, l.conns, l.depth, t.secs)]);
        }
      }
    }
    nodes = await twoNodes(bin, schemaUrl, vacuum, t);
  } finally {
    await Promise.all(servers.map((s) => s.stop()));
    for (const s of schemas) await sql.unsafe(`DROP SCHEMA IF EXISTS ${s} CASCADE`).catch(() => {});
    await sql.close();
  }
  const get = (load: string, server: string) => (ops.has(`${load}|${server}`) ? median(ops.get(`${load}|${server}`)!) : 0);
  const rows = LOADS.map((l) => {
    const pg = get(l.name, "mcq postgres");
    const full = get(l.name, "mcq sqlite full");
    return { load: l.name, postgres: pg, sqliteFull: full, memcached: get(l.name, "memcached"), vsSqliteFull: ratio(pg, full) };
  });
  const one = median(nodes.one);
  const two = median(nodes.two);
  const scale = { load: "pair 50x16", oneNode: one, twoNodes: two, ratio: ratio(two, one) };
  if (t.json) {
    console.log(JSON.stringify({ runs: t.runs, secs: t.secs, results: rows, twoNodes: scale }, null, 2));
    return;
  }
  console.log(`mcbench -m pair -s 100, medians of ${t.runs} alternating runs of ${t.secs} s`);
  console.log("load            mcq postgres  mcq sqlite full  memcached  postgres/sqlite full");
  for (const r of rows) {
    const mark = r.load === "pair 50x16" ? ` ${r.vsSqliteFull >= 0.3 ? "ok" : "MISS"} (>= 0.3)` : "";
    console.log(`${r.load.padEnd(16)}${String(r.postgres).padStart(12)}${String(r.sqliteFull).padStart(17)}${String(r.memcached || "-").padStart(11)}` +
      `${r.vsSqliteFull.toFixed(2).padStart(12)}${mark}`);
  }
  console.log(`\ntwo mcq nodes on one Postgres, pair 50x16 (25 connections on each node): one node ${one} ops/s, two nodes ${two} ops/s, ` +
    `${scale.ratio.toFixed(2)}x (target 1.3x, informational on 2 cores)`);
}

/** One node at 50x16, and two nodes on one schema with 25x16 each at once; vacuumed before each, alternating, medians. */
async function twoNodes(bin: string, schemaUrl: () => string, vacuum: () => Promise<void>, t: BenchTools): Promise<{ one: number[]; two: number[] }> {
  const url = schemaUrl();
  const a = await t.startMcq("mcq postgres node a", ["--store", url]);
  const b = await t.startMcq("mcq postgres node b", ["--store", url]);
  const one: number[] = [];
  const two: number[] = [];
  try {
    const oneNode = async (run: number) => {
      t.progress(`run ${run + 1}: one node, pair 50x16`);
      await vacuum();
      one.push(await pair(bin, a.port, 50, 16, t.secs));
    };
    const twoNodes = async (run: number) => {
      t.progress(`run ${run + 1}: two nodes, pair 2 x 25x16`);
      await vacuum();
      const both = await Promise.all([pair(bin, a.port, 25, 16, t.secs), pair(bin, b.port, 25, 16, t.secs)]);
      two.push(both[0] + both[1]);
    };
    for (let run = 0; run < t.runs; run++) {
      if (run % 2 === 0) await oneNode(run), await twoNodes(run);
      else await twoNodes(run), await oneNode(run);
    }
  } finally {
    await Promise.all([a.stop(), b.stop()]);
  }
  return { one, two };
}
