/**
 * Seeded, model-based stress test against the real server (issue 9). Six connections send a
 * seeded mix (stress-workload.ts): sets, plain, blocking and multi-key gets, open/close/abort,
 * peeks, pipelines longer than one turn runs, clients that stop reading, disconnects and quits.
 * Every reply is parsed strictly (stress-wire.ts) and checked against a model (stress-model.ts).
 * At checkpoints, with nothing in flight, `stats queue` must equal the model exactly. Each
 * phase ends with SIGTERM (exit 0) and a fault-free restart on the same data directory that
 * drains every queue: each message acknowledged STORED was consumed once or is drained now.
 *
 * Phases: clean; faults (MCQ_FAULTS makes commits, dequeues and releases fail, and leases expire
 * with --open-timeout); fulldisk (a real 24 MB tmpfs is filled, drained, and must take sets again).
 *
 *   bun run stress                       5 minutes of rounds, each with a new seed (printed)
 *   bun run stress --seed 7 --steps 3000 replays one round's request stream
 *   bun run stress --minutes 1 --phase faults
 * test/e2e/stress.test.ts runs a short form in npm test.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { serverCommand, startServer, tempDir, type Running } from "../test/e2e/harness";
import { INJECTED } from "../src/store/faults";
import { random } from "../test/random";
import { createModel, statsLine, Violation, type Counts } from "./stress-model";
import { openConn, showReply, type KeySpec, type Reply, type Req, type StressConn } from "./stress-wire";
import { ACTIONS, ALL_QUEUES, BIG, BIG_BYTES, choose, DEFAULT_MIX, getOf, pendingWait, keySpec, QUEUES, send, setOf, statsOf, WAITQ, type Ctx, type Mix } from "./stress-workload";

export type PhaseName = "clean" | "faults" | "fulldisk";

interface Phase {
  faults: string | null;
  lease: number;
  disk: boolean;
  /** The SERVER_ERROR reasons this phase may cause. */
  reasons: string[];
  bodySize: (rnd: () => number) => number;
  mix: (progress: number) => Mix;
}

const smallBodies = (rnd: () => number) => {
  const r = rnd();
  return r < 0.7 ? Math.floor(rnd() * 200) : r < 0.97 ? Math.floor(rnd() * 4000) : Math.floor(rnd() * 40_000);
};

export const PHASES: Record<PhaseName, Phase> = {
  clean: { faults: null, lease: 0, disk: false, reasons: [], bodySize: smallBodies, mix: () => DEFAULT_MIX },
  faults: {
    // A dequeue fails its whole batch, and a pipeline's batch holds hundreds: keep that one rare.
    faults: "commit=0.02,dequeue=0.002,release=0.1",
    lease: 600,
    disk: false,
    reasons: [INJECTED],
    bodySize: smallBodies,
    mix: () => DEFAULT_MIX,
  },
  // Fill the disk with large bodies, then mostly drain it.
  fulldisk: {
    faults: null,
    lease: 0,
    disk: true,
    reasons: ["out of space"],
    bodySize: (rnd) => 16_384 + Math.floor(rnd() * 49_152),
    mix: (p) => (p < 0.5 ? { ...DEFAULT_MIX, set: 120 } : { ...DEFAULT_MIX, set: 4, get: 40, multi: 20 }),
  },
};

const CONNS = 6;
const TMPFS_MB = 24;
/** How long a checkpoint polls for the server's counters to equal the model's. */
const CHECKPOINT_MS = 10_000;
/** How far ahead a checkpoint settles leases: a hold that may expire sooner is closed first. */
const LEASE_HORIZON_MS = 300;

export interface PhaseReport extends Counts {
  phase: PhaseName;
  steps: number;
  ms: number;
  actions: Record<string, number>;
  checkpoints: number;
  drained: number;
  skipped?: string;
}

export interface StressReport {
  seed: number;
  phases: PhaseReport[];
  /** The first violation, naming the seed, phase and step; null if none. */
  failure: string | null;
}

export interface StressOptions {
  seed: number;
  steps: number;
  phases?: PhaseName[];
  command?: string[];
  log?: (line: string) => void;
}

export async function stress(options: StressOptions): Promise<StressReport> {
  const { seed, steps, phases = ["clean", "faults", "fulldisk"], log = () => {} } = options;
  const report: StressReport = { seed, phases: [], failure: null };
  for (const name of phases) {
    // Each phase's own seed depends on its name, so `--phase` replays it alone.
    const r = await runPhase(name, seed + Object.keys(PHASES).indexOf(name) * 7919, steps, options.command ?? serverCommand(), report, log);
    report.phases.push(r);
    log(`seed ${seed} ${name}: ${JSON.stringify(r)}`);
    if (report.failure !== null) break;
  }
  return report;
}

async function runPhase(name: PhaseName, seed: number, steps: number, command: string[], report: StressReport, log: (l: string) => void) {
  const phase = PHASES[name];
  const started = Date.now();
  let mount: string | null = null;
  if (phase.disk) {
    mount = mountTmpfs();
    if (mount === null) {
      const why = `cannot mount a tmpfs (needs root)`;
      if (process.env.CI === "true") report.failure = `seed ${report.seed} phase ${name}: ${why}, and CI=true does not skip`;
      else log(`phase ${name} skipped: ${why}`);
      return emptyReport(name, why);
    }
  }
  const home = join(mount ?? tempDir("mcq-stress-"), "data");
  const run = createRun(name, seed, phase, command, home, report);
  try {
    await run.start();
    await run.steps(steps);
    if (phase.disk && report.failure === null) await run.recovers();
    // Even after a violation the drain says which acknowledged messages are gone.
    await run.drain();
  } catch (e) {
    run.fail(null, null, (e as Error).message);
  } finally {
    await run.stop();
    if (mount !== null) Bun.spawnSync(["umount", "-l", mount]);
    rmSync(mount ?? join(home, ".."), { recursive: true, force: true });
  }
  return { ...run.result(), ms: Date.now() - started };
}

function emptyReport(phase: PhaseName, skipped: string): PhaseReport {
  const counts = createModel(0, new Set(), () => false).counts;
  return { ...counts, phase, steps: 0, ms: 0, actions: {}, checkpoints: 0, drained: 0, skipped };
}

function mountTmpfs(): string | null {
  const dir = mkdtempSync(join(tmpdir(), "mcq-stress-full-"));
  if (Bun.spawnSync(["mount", "-t", "tmpfs", "-o", `size=${TMPFS_MB}m`, "tmpfs", dir]).exitCode === 0) return dir;
  rmSync(dir, { recursive: true, force: true });
  return null;
}

function createRun(name: PhaseName, seed: number, phase: Phase, command: string[], home: string, report: StressReport) {
  const rnd = random(seed);
  const args = phase.lease > 0 ? ["--open-timeout", String(phase.lease)] : [];
  const env: Record<string, string> = phase.faults === null ? {} : { MCQ_FAULTS: `${phase.faults},seed=${seed >>> 0 || 1}` };
  const live: StressConn[] = [];
  const model = createModel(phase.lease, new Set(phase.reasons), (id, queue) => {
    const c = live.find((x) => x.id === id);
    const gives = (k: KeySpec) => k.queue === queue && (k.mode === "abort" || k.mode === "close" || k.mode === "closeopen");
    return c === undefined || c.leaving !== null || c.pending.some((r) => r.keys?.some(gives));
  });
  const actions: Record<string, number> = {};
  let server: Running | null = null;
  let control: StressConn | null = null;
  let nextConn = 1;
  let checkpoints = 0;
  let drained = 0;
  let stepsDone = 0;

  const ctx: Ctx = {
    rnd,
    step: 0,
    model,
    conns: [],
    lastOpen: new Map(),
    bodySize: () => phase.bodySize(rnd),
    async settle(c, keep = () => false) {
      const ms = 20_000 + pendingWait(c);
      c.resume(); // a client that does not read gets no replies
      try {
        await c.until(() => c.pending.every(keep), ms, "replies");
      } catch {
        const waiting = c.pending.slice(0, 8).map((r) => `${JSON.stringify(r.text)} (step ${r.step})`).join(", ");
        fail(c, c.pending[0] ?? null, `no reply within ${ms} ms; ${c.pending.length} requests unanswered: ${waiting}${c.closed ? "; the connection is closed" : ""}`);
        throw new Error(report.failure!);
      }
    },
    async replace(i) {
      live.splice(live.indexOf(ctx.conns[i]!), 1);
      ctx.conns[i] = await connect(true);
    },
    tally: (a) => void (actions[a] = (actions[a] ?? 0) + 1),
  };

  function fail(c: StressConn | null, req: Req | null, what: string): void {
    const where = req === null ? `step ${ctx.step}` : `step ${req.step} (request ${JSON.stringify(req.text)}, reply read at step ${ctx.step})`;
    const recent = c === null ? "" : `\n  connection ${c.id}'s last replies:\n    ${c.log.join("\n    ")}`;
    // The server's own account, without the failures this phase injects on purpose.
    const logged = (server?.stderr() ?? "").split("\n").filter((l) => l && !l.includes(INJECTED)).slice(-8);
    const log = logged.length === 0 ? "" : `\n  server log:\n    ${logged.join("\n    ")}`;
    report.failure ??= `seed ${report.seed} phase ${name} ${where}${c === null ? "" : `, connection ${c.id}`}: ${what}${recent}${log}`;
  }

  async function connect(modelled: boolean): Promise<StressConn> {
    const c = await openConn(
      server!.port,
      nextConn++,
      (conn, req, reply) => {
        try {
          if (modelled) model.reply(conn.id, req, reply);
        } catch (e) {
          if (!(e instanceof Violation)) throw e;
          fail(conn, req, `${e.message}; reply ${JSON.stringify(showReply(reply))}`);
        }
      },
      fail,
    );
    live.push(c);
    return c;
  }

  async function start(): Promise<void> {
    server = await startServer(args, home, command, env);
    control = await connect(true);
    for (let i = 0; i < CONNS; i++) ctx.conns.push(await connect(true));
    // The big message slow readers peek at; injected failures may refuse it a few times.
    for (let i = 0; i < 50; i++) {
      const item = setOf(ctx, control, BIG, BIG_BYTES);
      send(control, [item]);
      await ctx.settle(control);
      if (item[0].reply?.kind === "line" && item[0].reply.line === "STORED") break;
    }
  }

  async function steps(n: number): Promise<void> {
    for (let step = 1; step <= n && report.failure === null; step++) {
      ctx.step = step;
      const action = choose(rnd, phase.mix(step / n));
      const i = Math.floor(rnd() * CONNS);
      const c = ctx.conns[i]!;
      ctx.tally(action);
      if (action === "checkpoint") await checkpoint();
      else {
        if (c.pending.length > 2500) await ctx.settle(c);
        await ACTIONS[action]!(ctx, c, i);
      }
      stepsDone = step;
      // Let replies in: the server and the readers share this process's event loop with us.
      await new Promise((ok) => setImmediate(ok));
    }
    if (report.failure === null) await checkpoint();
  }

  /** Nothing in flight, leases settled, then `stats queue` must equal the model (polled: a disconnect lands a moment later). */
  async function checkpoint(): Promise<void> {
    checkpoints++;
    for (const c of ctx.conns) c.resume();
    for (const c of ctx.conns) await ctx.settle(c);
    let last = "";
    const deadline = Date.now() + CHECKPOINT_MS;
    while (Date.now() < deadline && report.failure === null) {
      // A lease that may run out while we look: close it, and its reply says which way it went.
      for (const [id, queue] of model.uncertain(Date.now() + LEASE_HORIZON_MS)) {
        send(ctx.conns.find((x) => x.id === id)!, [getOf(ctx, [keySpec(queue, "close")])]);
      }
      for (const c of ctx.conns) await ctx.settle(c);
      while (Date.now() < deadline && report.failure === null) {
        const [got, at] = await serverView();
        const want = modelView();
        if (got === want) return;
        last = `stats: ${got}\n  model: ${want}`;
        if (model.uncertain(at).length > 0) break; // a lease may have run out meanwhile: settle again
        await Bun.sleep(10);
      }
    }
    fail(null, null, `at a checkpoint the server's counters differ from the model's for ${CHECKPOINT_MS} ms:\n  ${last}`);
  }

  const modelView = () =>
    ALL_QUEUES.map((q) => `${q}: ${model.expected(q)}`).join("; ") + `; waiters 0; curr_connections ${CONNS + 1}`;

  /** `stats queue` of each queue and the waiters and connections, as modelView() puts them. */
  async function serverView(): Promise<[string, number]> {
    const c = control!;
    const items = ALL_QUEUES.map((q) => statsOf(ctx, `stats queue ${q}`));
    items.push(statsOf(ctx, "stats"));
    send(c, items);
    await ctx.settle(c);
    const lines = (r: Req) => (r.reply as Extract<Reply, { kind: "stats" }>).lines;
    const general = lines(items.at(-1)![0]);
    const field = (f: string) => general.find((l) => l.startsWith(`STAT ${f} `))?.slice(6 + f.length) ?? "?";
    const view = ALL_QUEUES.map((q, i) => `${q}: ${statsLine(lines(items[i]![0]))}`).join("; ");
    return [`${view}; waiters ${field("waiters")}; curr_connections ${field("curr_connections")}`, items[0]![0].receivedAt];
  }

  /** After the disk filled and was drained, sets are taken again, without a restart. */
  async function recovers(): Promise<void> {
    const c = control!;
    for (const q of [...QUEUES, WAITQ]) {
      send(c, Array.from({ length: Number(/items (\d+)/.exec(model.expected(q))![1]) + 1 }, () => getOf(ctx, [{ key: q, queue: q, mode: "plain", t: 0 }])));
      await ctx.settle(c);
    }
    const deadline = Date.now() + 15_000;
    for (;;) {
      const item = setOf(ctx, c, QUEUES[0]!, 32_768);
      send(c, [item]);
      await ctx.settle(c);
      if (item[0].reply?.kind === "line" && item[0].reply.line === "STORED") break;
      if (Date.now() > deadline) return fail(c, item[0], "the disk was drained, yet sets were still refused 15 s later");
      await Bun.sleep(100);
    }
    await checkpoint();
  }

  /**
   * SIGTERM while every connection has a get parked on the empty WAITQ and requests behind it
   * (all read by the server: the parked gets prove it). Each is answered, then the connection
   * closes, and the exit code is 0.
   */
  async function stopLoaded(): Promise<void> {
    ctx.step++;
    const waitItems = Number(/items (\d+)/.exec(model.expected(WAITQ))![1]);
    send(control!, Array.from({ length: waitItems + 1 }, () => getOf(ctx, [keySpec(WAITQ, "plain")])));
    await ctx.settle(control!);
    const parked: Req[] = [];
    for (const c of ctx.conns) {
      const items = [getOf(ctx, [keySpec(WAITQ, "plain", 10_000)])];
      parked.push(items[0]![0]);
      for (let n = 1 + Math.floor(rnd() * 4); n > 0; n--) {
        const queue = QUEUES[Math.floor(rnd() * QUEUES.length)]!;
        items.push(rnd() < 0.5 ? setOf(ctx, c, queue, ctx.bodySize()) : getOf(ctx, [keySpec(queue, rnd() < 0.5 ? "plain" : "open")]));
      }
      send(c, items);
    }
    // Injected failures may end a parked get early (SERVER_ERROR): those are not waiting.
    const waiting = () => `waiters ${parked.filter((r) => r.reply === null).length};`;
    for (let i = 0; !(await serverView())[0].includes(waiting()); i++) {
      if (i === 500) return fail(null, null, `the stop's blocking gets never all waited (want ${waiting()})`);
      await Bun.sleep(10);
    }
    for (const c of live) c.leaving = "quit"; // closing with a request unanswered is a violation
    const code = await server!.kill("SIGTERM");
    server = null;
    if (code !== 0) return fail(null, null, `SIGTERM: exit code ${code}`);
    for (const c of live) await c.until(() => c.closed, 10_000, `connection ${c.id} to close after SIGTERM`);
    for (const c of ctx.conns) model.gone(c.id);
  }

  /** After stopLoaded(), a fault-free server on the same directory gives back what is left. */
  async function drain(): Promise<void> {
    const violated = report.failure !== null;
    if (!violated) await stopLoaded();
    else if (server !== null) {
      for (const c of live) c.leaving = "destroy";
      await server.kill("SIGTERM");
      server = null;
    }
    if (server !== null) return; // it still holds the data directory
    const failed = report.failure !== null;
    server = await startServer([], home, command);
    const c = await connect(false);
    const problems: string[] = [];
    for (const q of ALL_QUEUES) {
      const before = model.expected(q).replace(/open \d+/, "open 0");
      const n = Number(/items (\d+)/.exec(before)![1]);
      const items = [statsOf(ctx, `stats queue ${q}`), ...Array.from({ length: n + 1 }, () => getOf(ctx, [keySpec(q, "plain")]))];
      send(c, items);
      await ctx.settle(c);
      const got = statsLine((items[0]![0].reply as Extract<Reply, { kind: "stats" }>).lines);
      if (got !== before) problems.push(`after the restart, ${q}: stats ${got}; model ${before}`);
      for (const [r] of items.slice(1)) {
        const values = (r.reply as Extract<Reply, { kind: "get" }>).values;
        for (const v of values) {
          try {
            model.drained(v, q);
          } catch (e) {
            problems.push((e as Error).message);
          }
        }
        drained += values.length;
      }
    }
    const lost = model.lost();
    if (lost.length > 0) problems.push(`${lost.length} acknowledged messages lost: ${lost.slice(0, 5).join("; ")}`);
    c.leaving = "quit";
    const code = await server.kill("SIGTERM");
    server = null;
    if (code !== 0) problems.push(`the drained server's SIGTERM: exit code ${code}`);
    if (problems.length === 0) return;
    if (failed) report.failure += `\n  then the drain found: ${problems.join("\n    ")}`;
    else fail(null, null, `the drain found: ${problems.join("\n    ")}`);
  }

  async function stop(): Promise<void> {
    for (const c of live) {
      c.leaving ??= "destroy";
      c.client.close();
    }
    if (server !== null) await server.kill("SIGKILL");
  }

  return {
    start,
    steps,
    recovers,
    drain,
    stop,
    fail,
    result: (): Omit<PhaseReport, "ms"> => ({ phase: name, steps: stepsDone, ...model.counts, actions, checkpoints, drained }),
  };
}

if (import.meta.main) {
  const argv = process.argv.slice(2);
  const flag = (name: string) => (argv.includes(name) ? argv[argv.indexOf(name) + 1] : undefined);
  const given = flag("--seed");
  const steps = Number(flag("--steps") ?? 4000);
  const until = Date.now() + Number(flag("--minutes") ?? 5) * 60_000;
  const phases = flag("--phase") === undefined ? undefined : [flag("--phase") as PhaseName];
  let seed = given === undefined ? Math.floor(Math.random() * 2 ** 31) : Number(given);
  let rounds = 0;
  do {
    console.log(`stress: seed ${seed}, ${steps} steps per phase (replay: bun run stress --seed ${seed} --steps ${steps})`);
    const report = await stress({ seed, steps, phases, log: (l) => console.log(l) });
    rounds++;
    if (report.failure !== null) {
      console.log(`FAILED: ${report.failure}`);
      process.exit(1);
    }
    seed = (seed + 1) % 2 ** 31;
  } while (given === undefined && Date.now() < until);
  console.log(`stress: ${rounds} rounds, no violation`);
  process.exit(0);
}
