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
import { join } from "node:path";
import { INJECTED } from "../src/store/faults";
import { cleanUpOnExit, removeDir, serverCommand, tempDir, tmpfsDir } from "../test/e2e/harness";
import { drain, recovers, stop } from "./stress-end";
import { createModel } from "./stress-model";
import { createRun, result, runSteps, serverErrors, start, type Phase, type PhaseName, type PhaseReport, type StressReport } from "./stress-run";
import { DEFAULT_MIX } from "./stress-workload";

export type { PhaseName, PhaseReport, StressReport };

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
    // 32–96 KB: with 16–64 KB some seeds never filled the 24 MB (seed 1564446643 refused no set in
    // a CI run against dist/mcq, and the phase tested nothing); with these, that seed refuses 272.
    bodySize: (rnd) => 32_768 + Math.floor(rnd() * 65_536),
    mix: (p) => (p < 0.5 ? { ...DEFAULT_MIX, set: 120 } : { ...DEFAULT_MIX, set: 4, get: 40, multi: 20 }),
  },
};

const TMPFS_MB = 24;

export interface StressOptions {
  seed: number;
  /** Steps per phase. */
  steps: number;
  phases?: PhaseName[];
  /** The server command (default: serverCommand(), which MCQ_BIN overrides). */
  command?: string[];
  log?: (line: string) => void;
}

export async function stress(options: StressOptions): Promise<StressReport> {
  const { seed, steps, phases = ["clean", "faults", "fulldisk"], log = () => {} } = options;
  const report: StressReport = { seed, phases: [], failure: null };
  for (const name of phases) {
    // Each phase's own seed depends on its name, so `--phase` replays it alone.
    const phaseSeed = seed + Object.keys(PHASES).indexOf(name) * 7919;
    const r = await runPhase(name, phaseSeed, steps, options.command ?? serverCommand(), report, log);
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
    mount = tmpfsDir("mcq-stress-full-", TMPFS_MB);
    if (mount === null) {
      const why = "cannot mount a tmpfs (needs root)";
      if (process.env.CI === "true") report.failure = `seed ${report.seed} phase ${name}: ${why}, and CI=true does not skip`;
      else log(`phase ${name} skipped: ${why}`);
      return emptyReport(name, why);
    }
  }
  const home = join(mount ?? tempDir("mcq-stress-"), "data");
  const run = createRun(name, seed, phase, command, home, report);
  try {
    await start(run);
    await runSteps(run, steps);
    if (phase.disk && report.failure === null) await recovers(run);
    await drain(run);
  } catch (e) {
    run.fail(null, null, (e as Error).message);
  } finally {
    await stop(run);
    const errors = serverErrors(run);
    if (report.failure !== null && errors.length > 0) report.failure += `\n  the server logged:\n    ${errors.join("\n    ")}`;
    removeDir(join(home, "..")); // a tmpfs is unmounted first
  }
  return { ...result(run), ms: Date.now() - started };
}

function emptyReport(phase: PhaseName, skipped: string): PhaseReport {
  const counts = createModel({ lease: 0, reasons: [] }, () => false).counts;
  return { ...counts, phase, steps: 0, ms: 0, actions: {}, checkpoints: 0, drained: 0, injected: 0, skipped };
}

if (import.meta.main) {
  cleanUpOnExit(); // interrupted, it kills its servers and unmounts its tmpfs
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
