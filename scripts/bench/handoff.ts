/**
 * What design (a) of issue 15 would pay per batch to move SQLite into a Worker: the round trip of
 * one postMessage to a Worker and its answer back, with a batch's bodies as one transferred
 * ArrayBuffer (and, for comparison, as an array of small objects, copied by structured clone).
 * Prints the wall time per round trip, and the CPU per round trip of the main thread (the part that
 * would add to every request's cost) and of the whole process.
 *
 *   bun scripts/bench/handoff.ts [--requests 50] [--rounds 20000]
 */
import { readFileSync } from "node:fs";

const argv = process.argv.slice(2);
const option = (name: string, fallback: string) => (argv.includes(name) ? argv[argv.indexOf(name) + 1]! : fallback);
const REQUESTS = Number(option("--requests", "50"));
const ROUNDS = Number(option("--rounds", "20000"));
if (!(REQUESTS > 0 && ROUNDS > 0)) {
  process.stderr.write("handoff: --requests and --rounds must be positive numbers\n");
  process.exit(2);
}

// The worker answers every batch with one small message, as a commit's "durable" would.
const source = `self.onmessage = (e) => { const d = e.data; postMessage({ seq: d.seq, n: d.bytes ? d.bytes.byteLength : d.items.length }); };`;
const worker = new Worker(URL.createObjectURL(new Blob([source], { type: "application/javascript" })));

/** The main thread's CPU time in microseconds (utime + stime of its /proc task; USER_HZ 100). */
function mainThreadUs(): number {
  const f = readFileSync(`/proc/self/task/${process.pid}/stat`, "utf8").replace(/^.*\) /s, "").split(" ");
  return ((Number(f[11]) + Number(f[12])) * 1e6) / 100;
}

type Result = { wallUs: number; cpuUs: number; mainUs: number };
function roundTrip(make: (seq: number) => { message: unknown; transfer: ArrayBuffer[] }): Promise<Result> {
  return new Promise((done) => {
    let seq = 0;
    const cpu0 = process.cpuUsage();
    const main0 = mainThreadUs();
    const t0 = performance.now();
    const next = () => {
      const { message, transfer } = make(seq);
      worker.postMessage(message, transfer);
    };
    worker.onmessage = () => {
      if (++seq < ROUNDS) return next();
      const cpu = process.cpuUsage(cpu0);
      done({ wallUs: ((performance.now() - t0) * 1000) / ROUNDS, cpuUs: (cpu.user + cpu.system) / ROUNDS, mainUs: (mainThreadUs() - main0) / ROUNDS });
    };
    next();
  });
}

// Half the requests are sets of a 100-byte body with a short header, as in mcbench pair.
const perSet = 100 + 30;
const transferred = (seq: number) => {
  const bytes = new ArrayBuffer((REQUESTS / 2) * perSet);
  return { message: { seq, bytes }, transfer: [bytes] };
};
const cloned = (seq: number) => ({
  message: { seq, items: Array.from({ length: REQUESTS }, (_, i) => ({ op: i % 2 ? "get" : "set", queue: "mcb0", body: i % 2 ? null : "x".repeat(100) })) },
  transfer: [],
});

await roundTrip(transferred); // warm up both sides
for (const [name, make] of [["transferred ArrayBuffer", transferred], ["structured clone of objects", cloned]] as const) {
  const r = await roundTrip(make);
  console.log(`${name}, ${REQUESTS} requests a batch: ${r.wallUs.toFixed(1)} us a round trip; CPU ${r.mainUs.toFixed(1)} us main thread, ${r.cpuUs.toFixed(1)} us process`);
}
worker.terminate();
