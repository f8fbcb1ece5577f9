/**
 * `bun run bench --tls`: TLS against plain for pair 50x16 (tracker 11), runs alternating, medians.
 * mcq serves a plain (notls:) and a TLS listener at once. Beside it runs the least a Bun server
 * can do for that load (scripts/bench/echo.ts), also plain and TLS: its ratio is the platform's
 * own, a bound for mcq's. Two generators drive both: the TypeScript one (scripts/bench/load.ts,
 * TLS by Bun.connect) and, when cc and Debian's stunnel4 are there, mcbench (C) through a stunnel4
 * client (DECISIONS: the C generator). Each row also gives the server's CPU time per operation,
 * what TLS costs the server itself, and stunnel4's, the client's TLS: on a 2-core machine all of
 * them share the same cores.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { LoadResult } from "./load";

export interface TlsBenchOptions {
  root: string;
  mcq: string[];
  runs: number;
  secs: number;
  sync: string;
  json: boolean;
  progress(line: string): void;
}

/** A server under test: its plain port, its TLS port, and the port of a stunnel4 client to it. */
type Server = { name: string; pid: number; plain: number; tls: number; front: number };
/** One measure: a generator against one server's port, plain or TLS. */
type Generator = { name: string; run(s: Server, tls: boolean): Promise<{ ops: number; opsPerSec: number }> };
type Sample = { ops: number; serverUs: number; stunnelUs: number };

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const round2 = (x: number) => Math.round(x * 100) / 100;
/** CPU seconds (user + system) a process has used. */
const cpuSecs = (pid: number) => {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100;
};

/** Spawns a server and reads its stdout until `ready` matches. */
async function spawnUntil(cmd: string[], ready: RegExp): Promise<{ m: RegExpExecArray; proc: Bun.Subprocess<"ignore", "pipe", "pipe"> }> {
  const proc = Bun.spawn(cmd, { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  const reader = proc.stdout.getReader();
  let text = "";
  for (;;) {
    const m = ready.exec(text);
    if (m !== null) {
      reader.releaseLock();
      return { m, proc };
    }
    const { value, done } = await reader.read();
    if (done) throw new Error(`${cmd.join(" ")} did not start: ${await new Response(proc.stderr).text()}`);
    text += new TextDecoder().decode(value);
  }
}

export async function tlsBench(o: TlsBenchOptions): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), "mcq-bench-tls-"));
  const [cert, key] = [join(dir, "cert.pem"), join(dir, "key.pem")];
  const made = Bun.spawnSync(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
    "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost"], { stderr: "pipe" });
  if (made.exitCode !== 0) throw new Error(`openssl: ${made.stderr.toString()}`);
  const procs: Bun.Subprocess[] = [];
  try {
    const mcq = await spawnUntil([...o.mcq, "-p", "0", "-H", join(dir, "data"), "--sync", o.sync, "-l", "notls:127.0.0.1",
      "-l", "127.0.0.1:0", "-Z", "--tls-cert", cert, "--tls-key", key], /listening on .*:(\d+)\n.*listening on .*:(\d+)\n/);
    procs.push(mcq.proc);
    const echo = await spawnUntil([process.execPath, join(o.root, "scripts/bench/echo.ts"), cert, key], /plain (\d+) tls (\d+)\n/);
    procs.push(echo.proc);
    const servers: Server[] = [
      { name: "mcq", pid: mcq.proc.pid, plain: Number(mcq.m[1]), tls: Number(mcq.m[2]), front: 0 },
      { name: "echo.ts", pid: echo.proc.pid, plain: Number(echo.m[1]), tls: Number(echo.m[2]), front: 0 },
    ];
    const generators: Generator[] = [{ name: "TypeScript", run: (s, tls) => typescript(o, s, tls) }];
    const stunnel = await startStunnel(o, dir, servers, procs);
    if (stunnel !== null) generators.push(stunnel.generator);
    const samples = new Map<string, Sample[]>();
    for (let run = 0; run < o.runs; run++) {
      for (const g of generators) {
        const order = servers.flatMap((s) => [[s, false], [s, true]] as const);
        for (const [s, tls] of run % 2 === 0 ? order : [...order].reverse()) {
          o.progress(`run ${run + 1}: ${g.name} against ${s.name} ${tls ? "TLS" : "plain"}, pair 50x16`);
          const [server0, stunnel0] = [cpuSecs(s.pid), stunnel === null ? 0 : cpuSecs(stunnel.pid)];
          const { ops, opsPerSec } = await g.run(s, tls);
          const perOp = (secs: number) => (secs / Math.max(ops, 1)) * 1e6;
          const sample = { ops: opsPerSec, serverUs: perOp(cpuSecs(s.pid) - server0), stunnelUs: stunnel === null ? 0 : perOp(cpuSecs(stunnel.pid) - stunnel0) };
          const k = `${g.name}|${s.name}|${tls}`;
          samples.set(k, [...(samples.get(k) ?? []), sample]);
        }
      }
    }
    report(o, generators, servers, samples);
  } finally {
    for (const p of procs) p.kill();
    await Promise.all(procs.map((p) => p.exited));
    rmSync(dir, { recursive: true, force: true });
  }
}

function report(o: TlsBenchOptions, generators: Generator[], servers: Server[], samples: Map<string, Sample[]>): void {
  const rows = generators.flatMap((g) => servers.map((s) => {
    const of = (tls: boolean, f: (x: Sample) => number) => median(samples.get(`${g.name}|${s.name}|${tls}`)!.map(f));
    const [plain, tls] = [of(false, (x) => x.ops), of(true, (x) => x.ops)];
    return {
      generator: g.name, server: s.name, plain, tls, ratio: round2(tls / plain),
      serverCpuUsPerOp: { plain: round2(of(false, (x) => x.serverUs)), tls: round2(of(true, (x) => x.serverUs)) },
      stunnelCpuUsPerOp: g.name.startsWith("mcbench") ? round2(of(true, (x) => x.stunnelUs)) : null,
    };
  }));
  if (o.json) return console.log(JSON.stringify({ load: "pair 50x16", size: 100, runs: o.runs, secs: o.secs, sync: o.sync, rows }, null, 2));
  console.log(`pair 50x16, 100-byte messages, mcq --sync ${o.sync}; medians of ${o.runs} alternating runs of ${o.secs} s`);
  console.log("generator            server      plain ops/s  TLS ops/s  TLS/plain   server CPU us/op plain  TLS    stunnel4 us/op");
  for (const r of rows) {
    console.log(`${r.generator.padEnd(21)}${r.server.padEnd(12)}${String(r.plain).padStart(11)}${String(r.tls).padStart(11)}` +
      `${r.ratio.toFixed(2).padStart(11)}${r.serverCpuUsPerOp.plain.toFixed(2).padStart(25)}${r.serverCpuUsPerOp.tls.toFixed(2).padStart(7)}` +
      `${r.stunnelCpuUsPerOp === null ? "" : r.stunnelCpuUsPerOp.toFixed(2).padStart(18)}`);
  }
}

async function typescript(o: TlsBenchOptions, s: Server, tls: boolean): Promise<{ ops: number; opsPerSec: number }> {
  const args = ["--port", String(tls ? s.tls : s.plain), "--mode", "pair", "--conns", "50", "--depth", "16", "--secs", String(o.secs),
    "--prefix", `${s.name}-${tls}-`, ...(tls ? ["--tls"] : [])];
  const proc = Bun.spawn([process.execPath, join(o.root, "scripts/bench/load.ts"), ...args], { stdout: "pipe", stderr: "inherit" });
  const out = await new Response(proc.stdout).text();
  await proc.exited;
  return JSON.parse(out.trim().split("\n").pop()!) as LoadResult;
}

/** A stunnel4 client in front of each server's TLS port, and mcbench as a generator; null without them. */
async function startStunnel(o: TlsBenchOptions, dir: string, servers: Server[], procs: Bun.Subprocess[]) {
  if (Bun.which("stunnel4") === null || Bun.which("cc") === null) {
    o.progress("stunnel4 or cc not found: mcbench through stunnel4 skipped");
    return null;
  }
  const bin = join(dir, "mcbench");
  if (Bun.spawnSync(["cc", "-O2", "-o", bin, join(o.root, "scripts/bench/mcbench.c"), "-lpthread"]).exitCode !== 0) return null;
  let conf = "foreground = yes\npid =\n";
  for (const s of servers) {
    const probe = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
    s.front = probe.port;
    probe.stop(true);
    conf += `[${s.name}]\nclient = yes\naccept = 127.0.0.1:${s.front}\nconnect = 127.0.0.1:${s.tls}\n`;
  }
  writeFileSync(join(dir, "stunnel.conf"), conf);
  const proc = Bun.spawn(["stunnel4", join(dir, "stunnel.conf")], { stdout: "ignore", stderr: "ignore" });
  procs.push(proc);
  for (const s of servers) {
    for (let i = 0; ; i++) {
      try {
        (await Bun.connect({ hostname: "127.0.0.1", port: s.front, socket: { data() {} } })).end();
        break;
      } catch (e) {
        if (i === 100) throw new Error(`stunnel4 did not listen: ${(e as Error).message}`);
        await Bun.sleep(50); // nothing to await: stunnel4 says nothing when it listens
      }
    }
  }
  const generator: Generator = {
    name: "mcbench (stunnel4)",
    run: async (s, tls) => {
      const args = ["-p", String(tls ? s.front : s.plain), "-m", "pair", "-s", "100", "-q", "1", "-c", "50", "-P", "16", "-d", String(o.secs)];
      const out = await new Response(Bun.spawn([bin, ...args], { stdout: "pipe", stderr: "ignore" }).stdout).text();
      return { ops: Number(/ ops=(\d+)/.exec(out)?.[1] ?? 0), opsPerSec: Number(/ops_s=(\d+)/.exec(out)?.[1] ?? 0) };
    },
  };
  return { pid: proc.pid, generator };
}
