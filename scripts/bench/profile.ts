/**
 * Where a request's CPU goes: runs a server under Bun's sampling profiler (`--cpu-prof`), drives it
 * with mcbench (`-m pair -s 100`), stops it with SIGTERM so the profile is written, and attributes
 * each sample to a part of the server by the source file of its nearest frame of ours.
 *
 *   bun scripts/bench/profile.ts [--server mcq|minimal] [--sync normal|full] [-c 50] [-P 1] [-d 10]
 *                                [--interval 100] [--strace SECS] [--top 12] [--json]
 *
 * The profiler samples only while JavaScript (or a native call made from it: socket.write, a
 * SQLite step) is on the stack, so what no sample covers is the event loop itself (epoll, recv,
 * Bun's dispatch of socket events and setImmediate) and the process's other threads: that row is
 * the thread's (or process's) CPU time, read from /proc around the load, minus the samples' time.
 * A sample is wall time with JavaScript on the stack, so a native call that blocks (the fsync inside
 * a `--sync full` COMMIT) or a thread preempted on a loaded machine counts too: the share of the
 * samples is the robust figure, the us/request the rough one. The absolute CPU figures come from a
 * second, unprofiled run of the same load, since the profiler's signals and thread inflate them.
 * `--strace SECS` then runs the load again for SECS under `strace -c -f` and counts syscalls per
 * request (strace slows the server, so its run is separate from the profiled one).
 */
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative, resolve } from "node:path";
import { attribute, type CpuProfile } from "./profile-split";

const ROOT = resolve(import.meta.dir, "../..");
const argv = process.argv.slice(2);
const option = (name: string, fallback: string) => (argv.includes(name) ? argv[argv.indexOf(name) + 1]! : fallback);
const SERVER = option("--server", "mcq");
const SYNC = option("--sync", "normal");
const CONNS = option("-c", "50");
const DEPTH = option("-P", "1");
const SECS = option("-d", "10");
const INTERVAL = option("--interval", "100");
const STRACE = Number(option("--strace", "0"));
const TOP = Number(option("--top", "12"));

function fail(message: string): never {
  process.stderr.write(`profile: ${message}\n`);
  process.exit(2);
}

if (SERVER !== "mcq" && SERVER !== "minimal") fail(`--server must be mcq or minimal, not ${SERVER}`);
if (SYNC !== "normal" && SYNC !== "full") fail(`--sync must be normal or full, not ${SYNC}`);
for (const [name, v] of [["-c", CONNS], ["-P", DEPTH], ["-d", SECS], ["--interval", INTERVAL]]) {
  if (!/^[1-9]\d*$/.test(v!)) fail(`${name} must be a positive integer, not ${v}`);
}

function mcbench(): string {
  const bin = join(tmpdir(), "mcq-mcbench");
  if (Bun.which("cc") === null) fail("needs a C compiler (cc) to build scripts/bench/mcbench.c");
  const built = Bun.spawnSync(["cc", "-O2", "-o", bin, join(ROOT, "scripts/bench/mcbench.c"), "-lpthread"]);
  if (built.exitCode !== 0) fail(`building mcbench failed: ${built.stderr.toString()}`);
  return bin;
}

/** utime and stime in microseconds, of the process or of one of its threads. */
function cpuUs(path: string): { user: number; sys: number } {
  const fields = readFileSync(path, "utf8").replace(/^.*\) /s, "").split(" ");
  return { user: (Number(fields[11]) * 1e6) / 100, sys: (Number(fields[12]) * 1e6) / 100 }; // USER_HZ is 100 on Linux
}
const total = (t: { user: number; sys: number }) => t.user + t.sys;

function runLoad(bin: string, port: number, secs: string): { ops: number; opsPerSec: number } {
  const out = Bun.spawnSync([bin, "-p", String(port), "-m", "pair", "-s", "100", "-c", CONNS, "-P", DEPTH, "-d", secs, "-t", "2"]);
  const line = out.stdout.toString();
  const ops = Number(/ ops=(\d+)/.exec(line)?.[1] ?? NaN);
  if (!(ops > 0) || !/ errors=0\b/.test(line)) fail(`mcbench failed: ${line}${out.stderr.toString()}`);
  return { ops, opsPerSec: Number(/ops_s=(\d+)/.exec(line)![1]) };
}

/** Runs the load again under strace -c -f: calls per request of each syscall, most first. */
async function syscalls(bin: string, pid: number, port: number): Promise<{ name: string; perRequest: number }[] | string> {
  if (Bun.which("strace") === null) return "strace is not installed: syscalls not counted";
  const file = join(tmpdir(), `mcq-strace-${pid}.txt`);
  const strace = Bun.spawn(["strace", "-c", "-f", "-o", file, "-p", String(pid)], { stderr: "pipe" });
  await Bun.sleep(500); // strace attaches to every thread with nothing to await; its own output says nothing
  const { ops } = runLoad(bin, port, String(STRACE));
  strace.kill("SIGINT");
  await strace.exited;
  const rows = readFileSync(file, "utf8").split("\n").map((l) => l.trim().split(/\s+/)).filter((f) => f.length >= 5 && /^\d+$/.test(f[3]!));
  rmSync(file, { force: true });
  return rows.filter((f) => f.at(-1) !== "total").map((f) => ({ name: f.at(-1)!, perRequest: Number(f[3]) / ops }))
    .sort((a, b) => b.perRequest - a.perRequest);
}

interface Run {
  proc: ReturnType<typeof Bun.spawn>;
  port: number;
  dir: string;
}

async function start(profiled: boolean): Promise<Run> {
  const dir = mkdtempSync(join(tmpdir(), "mcq-profile-"));
  const script = SERVER === "mcq" ? [join(ROOT, "src/main.ts"), "-l", "127.0.0.1", "-p", "0", "-H", join(dir, "home"), "--sync", SYNC]
    : [join(ROOT, "scripts/bench/minimal.ts"), "-p", "0"];
  const prof = profiled ? ["--cpu-prof", `--cpu-prof-interval=${INTERVAL}`, `--cpu-prof-dir=${join(dir, "prof")}`] : [];
  const proc = Bun.spawn([process.execPath, ...prof, ...script], { stdout: "pipe", stderr: "ignore" });
  return { proc, port: await listeningPort(proc.stdout as ReadableStream<Uint8Array>), dir };
}

async function stop(run: Run): Promise<void> {
  run.proc.kill("SIGTERM");
  if ((await run.proc.exited) !== 0) fail(`the server exited with ${run.proc.exitCode} on SIGTERM`);
}

/** The load, with the CPU time the server's main thread and whole process spent on it, per request. */
function measured(bin: string, run: Run) {
  const pid = run.proc.pid;
  const cpu = () => ({ thread: cpuUs(`/proc/${pid}/task/${pid}/stat`), process: cpuUs(`/proc/${pid}/stat`), at: Date.now() * 1000 });
  const before = cpu();
  const load = runLoad(bin, run.port, SECS);
  const after = cpu();
  return { ...load, before, after, threadUs: (total(after.thread) - total(before.thread)) / load.ops,
    threadSysUs: (after.thread.sys - before.thread.sys) / load.ops, processUs: (total(after.process) - total(before.process)) / load.ops };
}

async function main(): Promise<void> {
  const bin = mcbench();
  // 1. Under the profiler: the proportions. The profiler's own cost (a signal per sample, its
  // thread) inflates every absolute figure of this run, so none is reported from it.
  const profiled = await start(true);
  const p = measured(bin, profiled);
  await stop(profiled);
  const prof = join(profiled.dir, "prof");
  const files = existsSync(prof) ? readdirSync(prof).filter((f) => f.endsWith(".cpuprofile")) : [];
  if (files.length !== 1) fail(`expected one .cpuprofile in ${prof}, found ${files.length}`);
  const profile = JSON.parse(readFileSync(join(prof, files[0]!), "utf8")) as CpuProfile;
  rmSync(profiled.dir, { recursive: true, force: true });
  const url = (u: string) => (u.startsWith("file://") ? u.slice(7) : u);
  const split = attribute(profile, (u) => (url(u).startsWith(ROOT + "/") ? relative(ROOT, url(u)) : url(u)), p.before.at, p.after.at);
  // The share of the main thread's CPU that ran JavaScript (or natives called from it).
  const inJs = Math.min(1, (split.samples * split.intervalUs) / (total(p.after.thread) - total(p.before.thread)));
  // 2. Without it: the absolute CPU per request, and the syscalls.
  const plain = await start(false);
  const u = measured(bin, plain);
  const counted = STRACE > 0 ? await syscalls(bin, plain.proc.pid, plain.port) : null;
  await stop(plain);
  rmSync(plain.dir, { recursive: true, force: true });
  const rows = [
    ...split.parts.map((x) => {
      const share = split.samples === 0 ? 0 : (x.samples / split.samples) * inJs;
      return { part: x.part, ofSamples: split.samples === 0 ? 0 : x.samples / split.samples, share, usPerRequest: share * u.threadUs };
    }),
    { part: "event loop / outside JS", ofSamples: null, share: 1 - inJs, usPerRequest: (1 - inJs) * u.threadUs },
    { part: "other threads (not in the share)", ofSamples: null, share: null, usPerRequest: u.processUs - u.threadUs },
  ];
  const title = `${SERVER === "mcq" ? `mcq ${SYNC}` : "minimal"}, mcbench pair ${CONNS}x${DEPTH}, 100 B, ${SECS} s`;
  const report = { title, opsPerSec: u.opsPerSec, requests: u.ops, profiledOpsPerSec: p.opsPerSec, samples: split.samples,
    intervalUs: split.intervalUs, threadCpuUsPerRequest: u.threadUs, threadSysUsPerRequest: u.threadSysUs, processCpuUsPerRequest: u.processUs, rows,
    top: split.top.slice(0, TOP), syscalls: counted };
  if (argv.includes("--json")) return console.log(JSON.stringify(report, null, 2));
  print(report);
}

function print(r: { title: string; opsPerSec: number; requests: number; profiledOpsPerSec: number; samples: number; intervalUs: number; threadCpuUsPerRequest: number;
  threadSysUsPerRequest: number; processCpuUsPerRequest: number; rows: { part: string; ofSamples: number | null; share: number | null; usPerRequest: number }[];
  top: { frame: string; part: string; samples: number }[]; syscalls: { name: string; perRequest: number }[] | string | null }): void {
  const f = (x: number, d = 2) => x.toFixed(d);
  console.log(`${r.title}: ${r.opsPerSec} ops/s, ${r.requests} requests (${r.profiledOpsPerSec} ops/s under the profiler)`);
  console.log(`CPU per request, unprofiled run: main thread ${f(r.threadCpuUsPerRequest)} us (${f(r.threadSysUsPerRequest)} of it in the kernel), process ${f(r.processCpuUsPerRequest)} us; ` +
    `profiled run: ${r.samples} samples in the load, one per ${f(r.intervalUs, 0)} us (10th percentile gap)`);
  // The share of the samples is the robust figure; the thread's share and us/request also rest on
  // the estimate of the time outside JavaScript (samples x period against the thread's CPU).
  const pct = (x: number | null) => (x === null ? "" : `${f(x * 100, 1)}%`);
  console.log(`| part | share of samples | share of the main thread | us/request |\n|---|---|---|---|`);
  for (const row of r.rows) console.log(`| ${row.part} | ${pct(row.ofSamples)} | ${pct(row.share)} | ${f(row.usPerRequest)} |`);
  console.log(`\nheaviest frames (self samples):`);
  for (const t of r.top) console.log(`${String(t.samples).padStart(7)}  ${t.part.padEnd(24)} ${t.frame}`);
  if (typeof r.syscalls === "string") console.log(`\n${r.syscalls}`);
  else if (r.syscalls !== null) {
    const total = r.syscalls.reduce((n, s) => n + s.perRequest, 0);
    console.log(`\nsyscalls per request (strace -c -f, separate run): ${f(total)} = ` +
      r.syscalls.filter((s) => s.perRequest >= 0.01).map((s) => `${s.name} ${f(s.perRequest)}`).join(", "));
  }
}

async function listeningPort(stdout: ReadableStream<Uint8Array>): Promise<number> {
  const reader = stdout.getReader();
  let text = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) fail(`the server exited before listening: ${text}`);
    text += new TextDecoder().decode(value);
    const m = /listening on .*:(\d+)/.exec(text);
    if (m) return reader.releaseLock(), Number(m[1]);
  }
}

await main();
