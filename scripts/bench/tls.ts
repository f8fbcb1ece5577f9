/**
 * `bun run bench --tls`: TLS against plain for pair 50x16 (tracker 11), on one mcq serving a plain
 * (notls:) and a TLS listener, runs alternating, medians. Three measures, since on a 2-core
 * machine the client's side of TLS competes with the server for the same cores:
 *   - the TypeScript generator (scripts/bench/load.ts --tls) against mcq, and against the least
 *     a Bun server can do for that load (scripts/bench/echo.ts): that one's ratio is the
 *     platform's, a bound for mcq's;
 *   - the server's CPU time per operation, plain and TLS: what TLS costs mcq itself;
 *   - mcbench (C) through Debian's stunnel4, when both are there (DECISIONS: the C generator).
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

type Target = { name: string; port: number; tls: boolean; pid: number };

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const round2 = (x: number) => Math.round(x * 100) / 100;
/** CPU seconds (user + system) a process has used. */
const cpuSecs = (pid: number) => {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100;
};

/** Spawns a server and reads its stdout until `ready` matches; returns the match and the process. */
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
  const cert = join(dir, "cert.pem");
  const key = join(dir, "key.pem");
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
    const targets: Target[] = [
      { name: "mcq plain", port: Number(mcq.m[1]), tls: false, pid: mcq.proc.pid },
      { name: "mcq TLS", port: Number(mcq.m[2]), tls: true, pid: mcq.proc.pid },
      { name: "echo plain", port: Number(echo.m[1]), tls: false, pid: echo.proc.pid },
      { name: "echo TLS", port: Number(echo.m[2]), tls: true, pid: echo.proc.pid },
    ];
    const ops = new Map<string, number[]>();
    const cpu = new Map<string, number[]>();
    for (let run = 0; run < o.runs; run++) {
      for (const t of run % 2 === 0 ? targets : [...targets].reverse()) {
        o.progress(`run ${run + 1}: ${t.name}, pair 50x16 (TypeScript generator)`);
        const before = cpuSecs(t.pid);
        const r = await load(o, t);
        ops.set(t.name, [...(ops.get(t.name) ?? []), r.opsPerSec]);
        cpu.set(t.name, [...(cpu.get(t.name) ?? []), ((cpuSecs(t.pid) - before) / r.ops) * 1e6]);
      }
    }
    const med = (name: string) => median(ops.get(name)!);
    const usPerOp = (name: string) => round2(median(cpu.get(name)!));
    const stunnel = await viaStunnel(o, dir, targets[0]!.port, targets[1]!.port, mcq.proc.pid, procs);
    const report = {
      load: "pair 50x16, 100-byte messages", runs: o.runs, secs: o.secs, sync: o.sync,
      mcq: { plain: med("mcq plain"), tls: med("mcq TLS"), ratio: round2(med("mcq TLS") / med("mcq plain")),
        serverCpuUsPerOp: { plain: usPerOp("mcq plain"), tls: usPerOp("mcq TLS") } },
      echo: { plain: med("echo plain"), tls: med("echo TLS"), ratio: round2(med("echo TLS") / med("echo plain")) },
      mcbenchViaStunnel: stunnel,
    };
    if (o.json) return console.log(JSON.stringify(report, null, 2));
    const line = (what: string, r: { plain: number; tls: number; ratio: number }) =>
      console.log(`${what.padEnd(47)}plain ${String(r.plain).padStart(7)} ops/s  TLS ${String(r.tls).padStart(7)} ops/s  TLS/plain ${r.ratio.toFixed(2)}`);
    console.log(`${report.load}, sync ${o.sync}, medians of ${o.runs} alternating runs of ${o.secs} s`);
    line("mcq, TypeScript generator", report.mcq);
    line("minimal Bun server (echo.ts), same generator", report.echo);
    const c = report.mcq.serverCpuUsPerOp;
    console.log(`  mcq's own CPU per operation: plain ${c.plain} us, TLS ${c.tls} us (${round2(c.tls / c.plain)}x)`);
    if (stunnel === null) return;
    line("mcq, mcbench through stunnel4", stunnel);
    const s = stunnel.serverCpuUsPerOp;
    console.log(`  mcq's own CPU per operation: plain ${s.plain} us, TLS ${s.tls} us (${round2(s.tls / s.plain)}x); ` +
      `stunnel4's (the client's TLS): ${stunnel.stunnelCpuUsPerOp} us`);
  } finally {
    for (const p of procs) p.kill();
    await Promise.all(procs.map((p) => p.exited));
    rmSync(dir, { recursive: true, force: true });
  }
}

async function load(o: TlsBenchOptions, t: Target): Promise<LoadResult> {
  const args = ["--port", String(t.port), "--mode", "pair", "--conns", "50", "--depth", "16", "--secs", String(o.secs),
    "--prefix", `${t.name.replace(" ", "-")}-`, ...(t.tls ? ["--tls"] : [])];
  const proc = Bun.spawn([process.execPath, join(o.root, "scripts/bench/load.ts"), ...args], { stdout: "pipe", stderr: "inherit" });
  const out = await new Response(proc.stdout).text();
  await proc.exited;
  return JSON.parse(out.trim().split("\n").pop()!) as LoadResult;
}

/** mcbench against the plain port and through a stunnel4 client to the TLS port; null without them. */
async function viaStunnel(o: TlsBenchOptions, dir: string, plain: number, tls: number, server: number, procs: Bun.Subprocess[]) {
  if (Bun.which("stunnel4") === null || Bun.which("cc") === null) {
    o.progress("stunnel4 or cc not found: mcbench through stunnel4 skipped");
    return null;
  }
  const bin = join(dir, "mcbench");
  if (Bun.spawnSync(["cc", "-O2", "-o", bin, join(o.root, "scripts/bench/mcbench.c"), "-lpthread"]).exitCode !== 0) return null;
  const probe = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const front = probe.port;
  probe.stop(true);
  writeFileSync(join(dir, "stunnel.conf"), `foreground = yes\npid =\n[mcq]\nclient = yes\naccept = 127.0.0.1:${front}\nconnect = 127.0.0.1:${tls}\n`);
  const stunnel = Bun.spawn(["stunnel4", join(dir, "stunnel.conf")], { stdout: "ignore", stderr: "ignore" });
  procs.push(stunnel);
  for (let i = 0; ; i++) {
    try {
      (await Bun.connect({ hostname: "127.0.0.1", port: front, socket: { data() {} } })).end();
      break;
    } catch (e) {
      if (i === 100) throw new Error(`stunnel4 did not listen: ${(e as Error).message}`);
      await Bun.sleep(50); // nothing to await: stunnel4 says nothing when it listens
    }
  }
  // CPU per operation of mcq and of stunnel4: on a small machine the client's TLS takes cores from the server.
  const runs = { plain: [] as number[][], tls: [] as number[][] };
  const run = (port: number) => {
    const [s0, t0] = [cpuSecs(server), cpuSecs(stunnel.pid)];
    const out = Bun.spawnSync([bin, "-p", String(port), "-m", "pair", "-s", "100", "-q", "1", "-c", "50", "-P", "16", "-d", String(o.secs)]);
    const ops = Number(/ops=(\d+)/.exec(out.stdout.toString())?.[1] ?? 0);
    const perOp = (secs: number) => (secs / Math.max(ops, 1)) * 1e6;
    const row = [Number(/ops_s=(\d+)/.exec(out.stdout.toString())?.[1] ?? 0), perOp(cpuSecs(server) - s0), perOp(cpuSecs(stunnel.pid) - t0)];
    (port === plain ? runs.plain : runs.tls).push(row);
  };
  for (let i = 0; i < o.runs; i++) {
    o.progress(`run ${i + 1}: mcbench, plain and through stunnel4`);
    for (const port of i % 2 === 0 ? [plain, front] : [front, plain]) run(port);
  }
  const col = (rows: number[][], i: number) => median(rows.map((r) => r[i]!));
  return {
    plain: col(runs.plain, 0), tls: col(runs.tls, 0), ratio: round2(col(runs.tls, 0) / col(runs.plain, 0)),
    serverCpuUsPerOp: { plain: round2(col(runs.plain, 1)), tls: round2(col(runs.tls, 1)) },
    stunnelCpuUsPerOp: round2(col(runs.tls, 2)),
  };
}
