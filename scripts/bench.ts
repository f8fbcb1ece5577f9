/**
 * `bun run bench`: mcq against the servers people compare it with, measured in the same run
 * with the same load generator (scripts/bench/load.ts) and the same load shapes.
 *
 *   bun run bench                      every load, 3 alternating runs, medians
 *   bun run bench --runs 1 --secs 1    quicker
 *   bun run bench --json               the table as JSON on stdout (progress stays on stderr)
 *   bun run bench --bin dist/mcq       the compiled binary instead of the source
 *   bun run bench --backlog 10000000   throughput, RSS and restart time with a backlog
 *   bun run bench --large              p99 of small gets while one client moves 1 MB messages
 *   bun run bench --tls [--sync normal] TLS against plain, pair 50x16 (scripts/bench/tls.ts)
 *   bun run bench --store postgres://… mcq on Postgres against SQLite full and memcached, and
 *                                      two nodes against one (scripts/bench/postgres.ts)
 *
 * With mcbench (scripts/bench/mcbench.c, built with cc) it also measures the loads of the performance
 * targets (docs/performance.md) with mcbench itself, the C generator those targets are defined with.
 *
 * Peers are used when found on PATH: memcached (-t 2), redis-server (appendonly yes, with
 * appendfsync always and everysec, driven with LPUSH/RPOP) and beanstalkd (-f 50, put/reserve/
 * delete). The minimal server (scripts/bench/minimal.ts, in memory) runs beside them as the measured
 * ceiling of a Bun server. When mcbench is there, the generator is first checked against it on memcached and on
 * mcq, and the output says if it is the bottleneck.
 */
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import type { LoadOptions, LoadResult } from "./bench/load";
import { tlsBench } from "./bench/tls";
import { postgresBench } from "./bench/postgres";

const ROOT = resolve(import.meta.dir, "..");
const argv = process.argv.slice(2);
const flag = (name: string) => argv.includes(name);
const option = (name: string, fallback: string) => (flag(name) ? argv[argv.indexOf(name) + 1]! : fallback);
const RUNS = Number(option("--runs", "3"));
const SECS = Number(option("--secs", "2"));
const BACKLOG = Number(option("--backlog", "0"));
const MCQ = flag("--bin") ? [resolve(option("--bin", "dist/mcq"))] : [process.execPath, join(ROOT, "src/main.ts")];
const progress = (line: string) => process.stderr.write(line + "\n");

interface Server {
  name: string;
  proto: LoadOptions["proto"];
  port: number;
  pid: number;
  stop(): Promise<void>;
}

interface Load {
  name: string;
  mode: LoadOptions["mode"];
  conns: number;
  depth: number;
}

const LOADS: Load[] = [
  { name: "pair 1x1", mode: "pair", conns: 1, depth: 1 },
  { name: "pair 50x1", mode: "pair", conns: 50, depth: 1 },
  { name: "pair 50x16", mode: "pair", conns: 50, depth: 16 },
  { name: "queues 50x16 (1000 queues)", mode: "queues", conns: 50, depth: 16 },
  { name: "set 50x16", mode: "set", conns: 50, depth: 16 },
  { name: "drain 50x16", mode: "drain", conns: 50, depth: 16 },
];

async function freePort(): Promise<number> {
  const l = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const port = l.port;
  l.stop(true);
  return port;
}

async function waitForPort(port: number): Promise<void> {
  for (let i = 0; i < 200; i++) {
    try {
      const s = await Bun.connect({ hostname: "127.0.0.1", port, socket: { data() {} } });
      s.end();
      return;
    } catch {
      await Bun.sleep(25);
    }
  }
  throw new Error(`nothing listens on ${port}`);
}

/** The data directories startMcq made; removed when the bench exits (a restart may reuse one after its stop). */
const homes: string[] = [];
process.on("exit", () => homes.forEach((h) => rmSync(h, { recursive: true, force: true })));
for (const signal of ["SIGINT", "SIGTERM"] as const) process.on(signal, () => process.exit(130));
const benchHome = () => (homes.push(mkdtempSync(join(tmpdir(), "mcq-bench-"))), homes.at(-1)!);

async function startMcq(name: string, args: string[], home = benchHome()): Promise<Server & { home: string }> {
  const proc = Bun.spawn([...MCQ, "-l", "127.0.0.1", "-p", "0", "-H", home, ...args], { stdout: "pipe", stderr: "ignore" });
  const reader = proc.stdout.getReader();
  let text = "";
  while (!/listening on .*:(\d+)/.test(text)) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`${name} did not start`);
    text += new TextDecoder().decode(value);
  }
  reader.releaseLock();
  const port = Number(/listening on .*:(\d+)/.exec(text)![1]);
  return { name, proto: "memcache", port, pid: proc.pid, home, stop: async () => void (proc.kill(), await proc.exited) };
}

async function startPeer(name: string, proto: Server["proto"], command: (port: number, dir: string) => string[]): Promise<Server | null> {
  const exe = command(0, "")[0]!;
  if (Bun.which(exe) === null) {
    progress(`${name}: ${exe} not found on PATH, skipped`);
    return null;
  }
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), `bench-${name}-`));
  const proc = Bun.spawn(command(port, dir), { cwd: dir, stdout: "ignore", stderr: "ignore" });
  await waitForPort(port);
  return {
    name,
    proto,
    port,
    pid: proc.pid,
    stop: async () => {
      proc.kill();
      await proc.exited;
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

async function load(server: Server, l: Load, secs = SECS, prefix = `b${Math.random().toString(36).slice(2, 7)}-`): Promise<LoadResult> {
  const args = ["--proto", server.proto, "--port", String(server.port), "--mode", l.mode, "--conns", String(l.conns),
    "--depth", String(l.depth), "--secs", String(secs), "--prefix", prefix];
  const proc = Bun.spawn([process.execPath, join(ROOT, "scripts/bench/load.ts"), ...args], { stdout: "pipe", stderr: "inherit" });
  const out = await new Response(proc.stdout).text();
  await proc.exited;
  return JSON.parse(out.trim().split("\n").pop()!) as LoadResult;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const rssMb = (pid: number) => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1] ?? 0) / 1024;

/** scripts/bench/mcbench.c compiled once, or null where there is no C compiler. */
function mcbench(): string | null {
  const source = resolve(ROOT, "scripts/bench/mcbench.c");
  if (!existsSync(source) || Bun.which("cc") === null) return null;
  const bin = join(tmpdir(), "mcq-mcbench");
  if (Bun.spawnSync(["cc", "-O2", "-o", bin, source, "-lpthread"]).exitCode !== 0) return null;
  return bin;
}

function runMcbench(bin: string, server: Server, l: Load, queues = 1): number {
  const c = Bun.spawnSync([bin, "-p", String(server.port), "-m", "pair", "-s", "100", "-q", String(queues), "-c", String(l.conns),
    "-P", String(l.depth), "-d", String(SECS)]);
  return Number(/ops_s=(\d+)/.exec(c.stdout.toString())?.[1] ?? 0);
}

/**
 * Our generator against mcbench (C) on the same server and load: is the generator the
 * bottleneck? Checked on memcached and on the fastest mcq, since either may be the faster.
 */
async function calibrate(bin: string | null, servers: Server[]): Promise<string | null> {
  if (bin === null) return null;
  const lines: string[] = [];
  for (const s of servers.filter((s) => s.name === "memcached" || s.name === "mcq normal")) {
    const theirs = runMcbench(bin, s, LOADS[2]!);
    const ours = (await load(s, LOADS[2]!)).opsPerSec;
    const ratio = ours / theirs;
    lines.push(`load generator check: on ${s.name}, pair 50x16, TypeScript ${ours} ops/s vs mcbench ${theirs} ops/s (${ratio.toFixed(2)})` +
      (ratio < 0.85 ? `\nWARNING: the TypeScript generator is the bottleneck on ${s.name}; see the mcbench table for the ratios` : ""));
  }
  return lines.join("\n");
}

/** The performance targets: mcbench -m pair -s 100, mcq against memcached, medians of alternating runs. */
const TARGETS = [
  { load: LOADS[0]!, queues: 1, full: 0.09, normal: 0.6 },
  { load: LOADS[1]!, queues: 1, full: 0.45, normal: 0.9 },
  { load: LOADS[2]!, queues: 1, full: 0.8, normal: 1.0 },
  { load: LOADS[3]!, queues: 1000, full: 0.7, normal: 0.9 },
];

function targets(bin: string, servers: Server[]) {
  const three = ["memcached", "mcq full", "mcq normal"].map((n) => servers.find((s) => s.name === n));
  if (three.some((s) => s === undefined)) return null;
  three.push(...servers.filter((s) => s.name === "minimal")); // the ceiling, in the same alternation
  return TARGETS.map((t) => {
    const ops = new Map<string, number[]>();
    for (let run = 0; run < RUNS; run++) {
      for (const s of run % 2 === 0 ? three : [...three].reverse()) {
        progress(`mcbench run ${run + 1}: ${s!.name}, ${t.load.name}`);
        ops.set(s!.name, [...(ops.get(s!.name) ?? []), runMcbench(bin, s!, t.load, t.queues)]);
      }
    }
    const memcached = median(ops.get("memcached")!);
    const ratio = (name: string) => Math.round((median(ops.get(name)!) / memcached) * 100) / 100;
    return {
      load: t.load.name,
      memcached,
      full: median(ops.get("mcq full")!),
      fullRatio: ratio("mcq full"),
      fullTarget: t.full,
      normal: median(ops.get("mcq normal")!),
      normalRatio: ratio("mcq normal"),
      normalTarget: t.normal,
      minimal: ops.has("minimal") ? median(ops.get("minimal")!) : null,
      minimalRatio: ops.has("minimal") ? ratio("minimal") : null,
    };
  });
}

/**
 * redis-benchmark -t lpush,rpop against each redis, at the loads of the targets with 50
 * connections. It runs the two commands one after the other; their pair rate (a push and a pop
 * per pair, 2 / (1/lpush + 1/rpop)) is what compares with mcbench's set+get pairs.
 */
function redisBenchmark(servers: Server[], reference: NonNullable<ReturnType<typeof targets>>) {
  if (Bun.which("redis-benchmark") === null) return null;
  const rows = [];
  for (const t of TARGETS.filter((t) => t.load.conns === 50 && t.queues === 1)) {
    const mine = reference.find((r) => r.load === t.load.name)!;
    for (const s of servers.filter((s) => s.proto === "redis")) {
      const rates: number[][] = [];
      for (let run = 0; run < RUNS; run++) {
        progress(`redis-benchmark run ${run + 1}: ${s.name}, ${t.load.name}`);
        const n = Math.round(SECS * (t.load.depth > 1 ? 600_000 : 120_000));
        const out = Bun.spawnSync(["redis-benchmark", "-p", String(s.port), "-c", String(t.load.conns), "-P", String(t.load.depth),
          "-t", "lpush,rpop", "-n", String(n), "-q"]).stdout.toString().replaceAll("\r", "\n");
        rates.push(["LPUSH", "RPOP"].map((c) => Number(new RegExp(`${c}: ([\\d.]+) requests per second`).exec(out)?.[1] ?? 0)));
      }
      const lpush = Math.round(median(rates.map((r) => r[0]!)));
      const rpop = Math.round(median(rates.map((r) => r[1]!)));
      const pairRate = Math.round(2 / (1 / lpush + 1 / rpop));
      const mcq = s.name === "redis always" ? { name: "mcq full", ops: mine.full } : { name: "mcq normal", ops: mine.normal };
      rows.push({ load: t.load.name, redis: s.name, lpush, rpop, pairRate, mcq: mcq.name, mcqOpsPerSec: mcq.ops,
        ratio: Math.round((mcq.ops / pairRate) * 100) / 100 });
    }
  }
  return rows;
}

async function main(): Promise<void> {
  if (BACKLOG > 0) return backlog();
  if (flag("--large")) return large();
  if (flag("--tls")) return tlsBench({ root: ROOT, mcq: MCQ, runs: RUNS, secs: SECS, sync: option("--sync", "full"), json: flag("--json"), progress });
  if (flag("--store")) {
    return postgresBench(option("--store", ""), { startMcq, startPeer, mcbench: mcbench(), runs: RUNS, secs: SECS, json: flag("--json"), progress });
  }
  const servers = (await Promise.all([
    startMcq("mcq full", ["--sync", "full"]),
    startMcq("mcq normal", ["--sync", "normal"]),
    startPeer("memcached", "memcache", (p) => ["memcached", "-t", "2", "-U", "0", "-l", "127.0.0.1", "-p", String(p), "-m", "1024", "-u", "root"]),
    startPeer("redis always", "redis", (p, d) => ["redis-server", "--port", String(p), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes", "--appendfsync", "always", "--dir", d]),
    startPeer("redis everysec", "redis", (p, d) => ["redis-server", "--port", String(p), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes", "--appendfsync", "everysec", "--dir", d]),
    startPeer("minimal", "memcache", (p) => [process.execPath, join(ROOT, "scripts/bench/minimal.ts"), "-p", String(p)]),
    startPeer("beanstalkd", "beanstalk", (p, d) => ["beanstalkd", "-l", "127.0.0.1", "-p", String(p), "-b", d, "-f", "50"]),
  ])).filter((s): s is Server => s !== null);
  try {
    const bin = mcbench();
    const note = await calibrate(bin, servers);
    if (note !== null) progress(note);
    const reference = bin === null ? null : targets(bin, servers);
    const redis = reference === null ? null : redisBenchmark(servers, reference);
    const results = new Map<string, LoadResult[]>();
    const total = RUNS * LOADS.length * servers.length;
    let step = 0;
    for (let run = 0; run < RUNS; run++) {
      // Alternate the order of the servers from run to run, so none always goes first.
      const order = run % 2 === 0 ? servers : [...servers].reverse();
      for (const l of LOADS) {
        for (const s of order) {
          progress(`[${++step}/${total}] run ${run + 1}: ${s.name}, ${l.name}`);
          const key = `${l.name}|${s.name}`;
          results.set(key, [...(results.get(key) ?? []), await load(s, l, SECS, `r${run}-`)]);
        }
      }
    }
    const table = LOADS.flatMap((l) => {
      const base = results.get(`${l.name}|memcached`);
      return servers.map((s) => {
        const runs = results.get(`${l.name}|${s.name}`)!;
        const ops = median(runs.map((r) => r.opsPerSec));
        return {
          load: l.name,
          server: s.name,
          opsPerSec: ops,
          p50us: median(runs.map((r) => r.p50us)),
          p99us: median(runs.map((r) => r.p99us)),
          vsMemcached: base ? Math.round((ops / median(base.map((r) => r.opsPerSec))) * 100) / 100 : null,
          errors: runs.reduce((n, r) => n + r.errors, 0),
        };
      });
    });
    if (flag("--json")) console.log(JSON.stringify({ runs: RUNS, secs: SECS, calibration: note, results: table, mcbench: reference, redisBenchmark: redis }, null, 2));
    else {
      if (note !== null) console.log(note);
      console.log(`medians of ${RUNS} runs of ${SECS} s; 100-byte messages`);
      console.log("load                        server           ops/s     p50 us   p99 us  vs memcached");
      for (const r of table) {
        console.log(`${r.load.padEnd(28)}${r.server.padEnd(16)}${String(r.opsPerSec).padStart(8)}${String(r.p50us).padStart(10)}` +
          `${String(r.p99us).padStart(9)}${String(r.vsMemcached ?? "-").padStart(13)}${r.errors ? `  errors ${r.errors}` : ""}`);
      }
      if (reference !== null) {
        const mark = (ratio: number, target: number) => `${ratio.toFixed(2)} ${ratio >= target ? "ok  " : "MISS"} (>= ${target})`;
        console.log(`\nmcbench -m pair -s 100 (the C load generator of the targets), medians of ${RUNS}, ratio to memcached:`);
        console.log("load                        memcached  mcq full  ratio                mcq normal  ratio                minimal  ratio");
        for (const r of reference) {
          console.log(`${r.load.padEnd(28)}${String(r.memcached).padStart(9)}${String(r.full).padStart(10)}  ${mark(r.fullRatio, r.fullTarget).padEnd(20)}` +
            `${String(r.normal).padStart(11)}  ${mark(r.normalRatio, r.normalTarget).padEnd(20)}` +
            (r.minimal === null ? "" : `${String(r.minimal).padStart(8)}  ${r.minimalRatio!.toFixed(2)}`));
        }
      }
      if (redis !== null && redis.length > 0) {
        console.log(`\nredis-benchmark -t lpush,rpop (medians of ${RUNS}) against mcq's mcbench pairs above:`);
        console.log("load                        redis              LPUSH      RPOP  pair rate  mcq         ops/s   ratio");
        for (const r of redis) {
          console.log(`${r.load.padEnd(28)}${r.redis.padEnd(16)}${String(r.lpush).padStart(8)}${String(r.rpop).padStart(10)}` +
            `${String(r.pairRate).padStart(11)}  ${r.mcq.padEnd(11)}${String(r.mcqOpsPerSec).padStart(7)}${r.ratio.toFixed(2).padStart(8)}`);
        }
      }
    }
  } finally {
    await Promise.all(servers.map((s) => s.stop()));
  }
}

/**
 * The backlog case: pair 50x16 on an empty store, with 10,000 messages queued, and with BACKLOG
 * queued; the peak RSS throughout; the time from a restart to the first get.
 *
 * On an empty store a pair's message is set and taken in the same batch and never written, so
 * the flatness of the store itself is the BACKLOG figure against the 10,000 one: both write and
 * read every message through the file.
 */
async function backlog(): Promise<void> {
  const SMALL = 10_000;
  const mcq = await startMcq("mcq", ["--sync", "normal"]);
  let peakRss = 0;
  const sampler = setInterval(() => (peakRss = Math.max(peakRss, rssMb(mcq.pid))), 100);
  const pair = LOADS[2]!;
  const runs = async () => {
    const xs: number[] = [];
    for (let i = 0; i < RUNS; i++) xs.push((await load(mcq, pair, SECS, "q")).opsPerSec);
    return median(xs);
  };
  const fill = async (n: number) => {
    const p = Bun.spawn([process.execPath, join(ROOT, "scripts/bench/fill.ts"), String(mcq.port), "q", String(n)], { stdout: "inherit", stderr: "inherit" });
    await p.exited;
  };
  const empty = await runs();
  progress(`empty store: pair 50x16 ${empty} ops/s; queuing ${SMALL} messages…`);
  await fill(SMALL);
  const small = await runs();
  progress(`${SMALL} queued: pair 50x16 ${small} ops/s; queuing ${BACKLOG - SMALL} more…`);
  await fill(BACKLOG - SMALL);
  const rssFull = rssMb(mcq.pid);
  const withBacklog = await runs();
  clearInterval(sampler);
  await mcq.stop();
  const t0 = performance.now();
  const again = await startMcq("mcq", ["--sync", "normal"], mcq.home);
  const s = await Bun.connect({ hostname: "127.0.0.1", port: again.port, socket: { data: (_s, d) => void got(d) } });
  let got!: (d: Buffer) => void;
  await new Promise<void>((ok) => {
    got = () => ok();
    s.write("get q\r\n");
  });
  const firstGetMs = performance.now() - t0;
  s.end();
  await again.stop();
  const ratio = (a: number, b: number) => Math.round((a / b) * 100) / 100;
  const report = { backlog: BACKLOG, emptyOpsPerSec: empty, smallBacklogOpsPerSec: small, backlogOpsPerSec: withBacklog,
    ratioToEmpty: ratio(withBacklog, empty), ratioToSmallBacklog: ratio(withBacklog, small), rssMbQueued: Math.round(rssFull),
    rssMbPeak: Math.round(peakRss), restartToFirstGetMs: Math.round(firstGetMs) };
  console.log(flag("--json") ? JSON.stringify(report) : report);
  rmSync(mcq.home, { recursive: true, force: true });
}

/** Small set+get pairs on 10 connections, alone and beside a client moving 1 MB messages. */
async function large(): Promise<void> {
  const small: Load = { name: "pair 10x1", mode: "pair", conns: 10, depth: 1 };
  const rows = [];
  for (const sync of ["full", "normal"]) {
    const mcq = await startMcq(`mcq ${sync}`, ["--sync", sync]);
    const alone = await load(mcq, small, SECS, "small");
    const neighbour = Bun.spawn([process.execPath, join(ROOT, "scripts/bench/large.ts"), String(mcq.port), String(SECS + 1)], { stdout: "pipe" });
    const beside = await load(mcq, small, SECS, "small");
    const moved = JSON.parse((await new Response(neighbour.stdout).text()).trim()) as { mbPerSec: number };
    rows.push({ sync, aloneP99us: alone.p99us, besideP99us: beside.p99us, besideOpsPerSec: beside.opsPerSec, largeMbPerSec: moved.mbPerSec });
    await mcq.stop();
    rmSync(mcq.home, { recursive: true, force: true });
  }
  console.log(flag("--json") ? JSON.stringify(rows) : rows);
}

await main();
