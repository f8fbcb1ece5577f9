/**
 * One phase of the stress test against one server: its connections, model and seeded steps, and
 * the checkpoints where, with nothing in flight, the server's counters must equal the model's.
 * The end of a phase (stop under load, drain) is in stress-end.ts.
 */
import { INJECTED } from "../src/store/faults";
import { startServer, type Running } from "../test/e2e/harness";
import { random } from "../test/random";
import { createModel, statsLine, Violation, type Counts, type Model } from "./stress-model";
import { openConn, showReply, type KeySpec, type Reply, type Req, type StressConn } from "./stress-wire";
import { ACTIONS, ALL_QUEUES, BIG, BIG_BYTES, choose, getOf, keySpec, pendingWait, send, setOf, statsOf, type Ctx, type Mix } from "./stress-workload";

export type PhaseName = "clean" | "faults" | "fulldisk";

export interface Phase {
  /** MCQ_FAULTS for the server (src/store/faults.ts), or null for none. */
  faults: string | null;
  /** --open-timeout in ms, 0 for none. */
  lease: number;
  /** The data directory is a small tmpfs that fills up. */
  disk: boolean;
  /** The SERVER_ERROR reasons this phase may cause. */
  reasons: string[];
  bodySize: (rnd: () => number) => number;
  /** The action weights at `progress` (0 to 1) through the phase. */
  mix: (progress: number) => Mix;
}

export interface PhaseReport extends Counts {
  phase: PhaseName;
  steps: number;
  ms: number;
  actions: Record<string, number>;
  checkpoints: number;
  drained: number;
  /** Store failures the server logged as injected (MCQ_FAULTS): the failure paths really ran. */
  injected: number;
  skipped?: string;
}

export interface StressReport {
  seed: number;
  phases: PhaseReport[];
  /** The first violation, naming the seed, phase and step; null if none. */
  failure: string | null;
}

/** Workers, besides the control connection that reads stats. */
export const CONNS = 6;
/** How long a checkpoint polls for the server's counters to equal the model's. */
const CHECKPOINT_MS = 10_000;
/** How far ahead a checkpoint settles leases: a hold that may expire sooner is closed first. */
const LEASE_HORIZON_MS = 300;

export interface Run {
  name: PhaseName;
  phase: Phase;
  report: StressReport;
  home: string;
  command: string[];
  rnd: () => number;
  model: Model;
  ctx: Ctx;
  /** Every connection not yet replaced, the control connection included. */
  live: StressConn[];
  server: Running | null;
  /** The phase's first server, the one the workload ran against (its log outlives it). */
  first: Running | null;
  control: StressConn | null;
  checkpoints: number;
  drained: number;
  stepsDone: number;
  actions: Record<string, number>;
  /** Records the first violation (later ones are consequences). */
  fail(c: StressConn | null, req: Req | null, what: string): void;
  /** A connection to the running server; `modelled`: its replies go through the model. */
  connect(modelled: boolean): Promise<StressConn>;
}

export function createRun(name: PhaseName, seed: number, phase: Phase, command: string[], home: string, report: StressReport): Run {
  const rnd = random(seed);
  let nextConn = 1;
  const live: StressConn[] = [];
  // A holder may be giving its message back right now: an abort or close in flight, or leaving.
  const releasing = (id: number, queue: string) => {
    const c = live.find((x) => x.id === id);
    const gives = (k: KeySpec) => k.queue === queue && (k.mode === "abort" || k.mode === "close" || k.mode === "closeopen");
    return c === undefined || c.leaving !== null || c.pending.some((r) => r.keys?.some(gives));
  };
  const model = createModel({ lease: phase.lease, reasons: phase.reasons }, releasing);
  const run: Run = {
    name, phase, report, home, command, rnd, model, live,
    ctx: undefined as unknown as Ctx,
    server: null,
    first: null,
    control: null,
    checkpoints: 0,
    drained: 0,
    stepsDone: 0,
    actions: {},
    fail(c, req, what) {
      const where = req === null ? `step ${run.ctx.step}` : `step ${req.step} (request ${JSON.stringify(req.text)}, reply read at step ${run.ctx.step})`;
      const recent = c === null ? "" : `\n  connection ${c.id}'s last replies:\n    ${c.log.join("\n    ")}`;
      // The server's own account, without the failures this phase injects on purpose.
      const logged = (run.server?.stderr() ?? "").split("\n").filter((l) => l && !l.includes(INJECTED)).slice(-8);
      const log = logged.length === 0 ? "" : `\n  server log:\n    ${logged.join("\n    ")}`;
      report.failure ??= `seed ${report.seed} phase ${name} ${where}${c === null ? "" : `, connection ${c.id}`}: ${what}${recent}${log}`;
    },
    async connect(modelled) {
      const onReply = (conn: StressConn, req: Req, reply: Reply) => {
        try {
          if (modelled) model.reply(conn.id, req, reply);
        } catch (e) {
          if (!(e instanceof Violation)) throw e;
          run.fail(conn, req, `${e.message}; reply ${JSON.stringify(showReply(reply))}`);
        }
      };
      const c = await openConn(run.server!.port, nextConn++, onReply, run.fail);
      live.push(c);
      return c;
    },
  };
  run.ctx = createCtx(run);
  return run;
}

function createCtx(run: Run): Ctx {
  const ctx: Ctx = {
    rnd: run.rnd,
    step: 0,
    model: run.model,
    conns: [],
    lastOpen: new Map(),
    bodySize: () => run.phase.bodySize(run.rnd),
    async settle(c, keep = () => false) {
      const ms = 20_000 + pendingWait(c);
      c.resume(); // a client that does not read gets no replies
      try {
        await c.until(() => c.pending.every(keep), ms, "replies");
        if (c.pending.length === 0) c.unsettled = 0;
      } catch {
        const waiting = c.pending.slice(0, 8).map((r) => `${JSON.stringify(r.text)} (step ${r.step})`).join(", ");
        run.fail(c, c.pending[0] ?? null, `no reply within ${ms} ms; ${c.pending.length} requests unanswered: ${waiting}${c.closed ? "; the connection is closed" : ""}`);
        throw new Error(run.report.failure!);
      }
    },
    async replace(i) {
      run.live.splice(run.live.indexOf(ctx.conns[i]!), 1);
      ctx.conns[i] = await run.connect(true);
    },
    tally: (a) => void (run.actions[a] = (run.actions[a] ?? 0) + 1),
  };
  return ctx;
}

/** Starts the server with the phase's flags and faults, connects, and stores the big message. */
export async function start(run: Run): Promise<void> {
  const args = run.phase.lease > 0 ? ["--open-timeout", String(run.phase.lease)] : [];
  const seed = Math.floor(run.rnd() * 2 ** 31) || 1;
  const env: Record<string, string> = run.phase.faults === null ? {} : { MCQ_FAULTS: `${run.phase.faults},seed=${seed}` };
  run.server = run.first = await startServer(args, run.home, run.command, env);
  const control = (run.control = await run.connect(true));
  for (let i = 0; i < CONNS; i++) run.ctx.conns.push(await run.connect(true));
  // The big message slow readers peek at; injected failures may refuse it a few times.
  for (let i = 0; i < 50; i++) {
    const item = setOf(run.ctx, control, BIG, BIG_BYTES);
    send(control, [item]);
    await run.ctx.settle(control);
    if (item[0].reply?.kind === "line" && item[0].reply.line === "STORED") break;
  }
}

/** `n` seeded steps, then a checkpoint. */
export async function runSteps(run: Run, n: number): Promise<void> {
  const { ctx, report } = run;
  for (let step = 1; step <= n && report.failure === null; step++) {
    ctx.step = step;
    const action = choose(run.rnd, run.phase.mix(step / n));
    const i = Math.floor(run.rnd() * CONNS);
    const c = ctx.conns[i]!;
    ctx.tally(action);
    if (action === "checkpoint") await checkpoint(run);
    else {
      if (c.unsettled > 2500) await ctx.settle(c); // bounds what is in flight, the same way for a seed
      await ACTIONS[action]!(ctx, c, i);
    }
    run.stepsDone = step;
    // Let replies in: the server's readers share this process's event loop with the steps.
    await new Promise((ok) => setImmediate(ok));
  }
  if (report.failure === null) await checkpoint(run);
}

/**
 * Nothing in flight and leases settled, then `stats queue` of every queue, the waiters and the
 * connections must equal the model, and the waits that ran out must fit the replies. Polled: a
 * disconnect reaches the server a moment later.
 */
export async function checkpoint(run: Run): Promise<void> {
  const { ctx, model } = run;
  run.checkpoints++;
  for (const c of ctx.conns) await ctx.settle(c);
  let last = "";
  const deadline = Date.now() + CHECKPOINT_MS;
  while (Date.now() < deadline && run.report.failure === null) {
    // A lease that may run out while we look: close it, and its reply says which way it went.
    for (const [id, queue] of model.uncertain(Date.now() + LEASE_HORIZON_MS)) {
      send(ctx.conns.find((x) => x.id === id)!, [getOf(ctx, [keySpec(queue, "close")])]);
    }
    for (const c of ctx.conns) await ctx.settle(c);
    while (Date.now() < deadline && run.report.failure === null) {
      const [got, at, timeouts] = await serverView(run);
      const want = ALL_QUEUES.map((q) => `${q}: ${model.expected(q)}`).join("; ") + `; waiters 0; curr_connections ${CONNS + 1}`;
      if (got === want) {
        // Nothing waits and nothing is in flight: the count is final.
        const wrong = model.timeouts(timeouts);
        return wrong === null ? undefined : run.fail(null, null, `at a checkpoint, ${wrong}`);
      }
      last = `stats: ${got}\n  model: ${want}`;
      if (model.uncertain(at).length > 0) break; // a lease may have run out meanwhile: settle again
      await Bun.sleep(10);
    }
  }
  run.fail(null, null, `at a checkpoint the server's counters differ from the model's for ${CHECKPOINT_MS} ms:\n  ${last}`);
}

/** `stats queue` of each queue, then the waiters and connections; when the reply was read; get_timeouts. */
export async function serverView(run: Run): Promise<[string, number, number]> {
  const c = run.control!;
  const items = ALL_QUEUES.map((q) => statsOf(run.ctx, `stats queue ${q}`));
  items.push(statsOf(run.ctx, "stats"));
  send(c, items);
  await run.ctx.settle(c);
  const lines = (r: Req) => (r.reply as Extract<Reply, { kind: "stats" }>).lines;
  const general = lines(items.at(-1)![0]);
  const field = (f: string) => general.find((l) => l.startsWith(`STAT ${f} `))?.slice(6 + f.length) ?? "?";
  const view = ALL_QUEUES.map((q, i) => `${q}: ${statsLine(lines(items[i]![0]))}`).join("; ");
  return [`${view}; waiters ${field("waiters")}; curr_connections ${field("curr_connections")}`, items[0]![0].receivedAt, Number(field("get_timeouts"))];
}

/** The server's errors, but the failures the phase causes on purpose (for a failure message). */
export function serverErrors(run: Run): string[] {
  const lines = (run.first?.stderr() ?? "").split("\n");
  return lines.filter((l) => / (ERROR|WARN) /.test(l) && !l.includes(INJECTED) && !l.includes("out of space")).slice(0, 6);
}

export function result(run: Run): Omit<PhaseReport, "ms"> {
  const { name, stepsDone, actions, checkpoints, drained } = run;
  const injected = (run.first?.stderr() ?? "").split("\n").filter((l) => l.includes(`batch undone: ${INJECTED}`)).length;
  return { phase: name, steps: stepsDone, ...run.model.counts, actions, checkpoints, drained, injected };
}
