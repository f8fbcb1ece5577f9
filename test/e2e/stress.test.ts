/**
 * The short form of the seeded stress test (scripts/stress.ts): three phases of STRESS_STEPS
 * steps each (clean; injected store failures with leases; a full tmpfs), every reply checked
 * against the model. The seed is new on each run and named in the test and in any failure;
 * replay it with STRESS_SEED=<n> bun test test/e2e/stress.test.ts, or
 * bun run stress --seed <n> --steps <steps>. `bun run stress` runs for 5 minutes.
 */
import { expect, test } from "bun:test";
import { stress } from "../../scripts/stress";

const SEED = Number(process.env.STRESS_SEED ?? Math.floor(Math.random() * 2 ** 31));
const STEPS = Number(process.env.STRESS_STEPS ?? 1200);

test(`seeded stress against the real server (seed ${SEED}, ${STEPS} steps per phase)`, async () => {
  const report = await stress({ seed: SEED, steps: STEPS });
  expect(report.failure).toBeNull();
  for (const r of report.phases) {
    if (r.skipped !== undefined) continue; // a full disk needs root; under CI=true that is a failure
    expect({ phase: r.phase, steps: r.steps }).toEqual({ phase: r.phase, steps: STEPS });
    // The run really exercised what it checks.
    expect(r.stored).toBeGreaterThan(STEPS);
    expect(r.consumed).toBeGreaterThan(STEPS / 2);
    expect(r.checkpoints).toBeGreaterThanOrEqual(2);
    for (const action of ["pipeline", "slow", "disconnect", "quit", "closeopen", "abort", "multi"]) {
      expect(r.actions[action] ?? 0).toBeGreaterThan(0);
    }
  }
  const phase = (name: string) => report.phases.find((r) => r.phase === name)!;
  // Failures were injected, so their paths ran. Whether a client saw one depends on timing: a
  // failed give-back answers no one, and how many batches a run makes depends on batching.
  expect(phase("faults").injected).toBeGreaterThan(0);
  if (phase("fulldisk").skipped === undefined) expect(phase("fulldisk").refused).toBeGreaterThan(0);
}, 180_000);
