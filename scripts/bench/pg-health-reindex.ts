/**
 * pg-health.ts, mcq's own index upkeep (--pg-reindex, src/store/postgres-reindex.ts): the
 * rebuilds mcq logged during a round, with the set rate in the seconds they overlapped, and the
 * sizes after two more of mcq's checks once the load is over, optionally under a light load (one
 * client's set/get pairs in 1 s runs of mcbench: the runs a rebuild overlapped against the rest).
 */
import type { LogLine, Options, Sample } from "./pg-health";

const REBUILT = /reindexed \w+\.(\w+): ([\d,]+ kB) -> ([\d,]+ kB) in (\d+) ms/;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? 0;
const kb = (b: number) => `${Math.round(b / 1024).toLocaleString("en")} kB`;
const relBytes = (s: Sample, table: string) => s.rels.filter((r) => r.table === table).reduce((n, r) => n + r.bytes, 0);
const n = (x: number) => Math.round(x).toLocaleString("en");

/** mcq's rebuild lines since `from` (ms): index, sizes, and when it ran. */
function rebuildLines(log: LogLine[], from: number) {
  return log.filter((l) => l.at >= from && REBUILT.test(l.line)).map((l) => {
    const [, index, before, after, ms] = REBUILT.exec(l.line)!;
    return { index: index!, before: before!, after: after!, ms: Number(ms), from: l.at - Number(ms), to: l.at };
  });
}

/**
 * mcq's rebuilds since the round began; for each one during the load, the set rate in the
 * seconds it overlapped against the median of the load's seconds with sets.
 */
export function rebuilds(o: Options, log: LogLine[], r: { began: number; secs: number; rates: { at: number; ids: number }[] }): void {
  const rates = r.rates.slice(1).map((x, i) => ({ from: r.rates[i]!.at, to: x.at, rate: (x.ids - r.rates[i]!.ids) / ((x.at - r.rates[i]!.at) / 1000) }));
  const typical = median(rates.filter((x) => x.rate > 0).map((x) => x.rate));
  const loadEnd = r.began + r.secs * 1000;
  const seen = rebuildLines(log, r.began).map((x) => {
    const touching = rates.filter((y) => y.to >= x.from && y.from <= x.to).map((y) => y.rate);
    return { ...x, atS: Math.round((x.to - r.began) / 1000), duringLoad: x.to <= loadEnd, setsPerS: touching.length ? Math.round(Math.min(...touching)) : null };
  });
  if (o.json) {
    console.log(JSON.stringify({ rebuilds: seen, medianSetsPerS: Math.round(typical) }));
    return;
  }
  console.log(`mcq's index rebuilds (--pg-reindex ${o.pgReindex}) since the round began: ${seen.length === 0 ? "none" : ""}`);
  for (const x of seen) {
    console.log(`  +${x.atS} s ${x.index} ${x.before} -> ${x.after} in ${x.ms} ms` + (x.duringLoad
      ? `, during the load: ${x.setsPerS === null ? "?" : n(x.setsPerS)} sets/s in the seconds it overlapped (median of the load ${n(typical)})`
      : ", after the load"));
  }
}

/**
 * After the settle: two more of mcq's index checks (the first may still count the load's last
 * writes), then the sizes. With --under-load, one client's pairs run meanwhile in 1 s slices.
 */
export async function afterChecks(o: Options, log: LogLine[], start: Sample, sample: () => Promise<Sample>,
  pairs: (args: string[]) => Promise<Record<string, number>>): Promise<void> {
  const from = log.length;
  const began = Date.now();
  const before = await sample();
  const deadline = Date.now() + (3 * o.pgReindex + 30) * 1000;
  const checks = () => log.slice(from).filter((l) => l.line.includes("index check done")).length;
  const slices: { from: number; to: number; opsS: number }[] = [];
  let waiting = true;
  // mcbench fails on any error reply (SERVER_ERROR included), and so does the run.
  const light = o.underLoad ? (async () => {
    while (waiting) {
      const t = Date.now();
      const r = await pairs(["-c", "1", "-P", "1", "-d", "1"]);
      slices.push({ from: t, to: Date.now(), opsS: r.ops_s! });
    }
  })() : Promise.resolve();
  try {
    while (checks() < 2 && Date.now() < deadline) await Bun.sleep(500);
  } finally {
    waiting = false;
    await light;
  }
  const after = await sample();
  const at = (s: Sample, name: string) => s.rels.find((x) => x.name === name)?.bytes ?? 0;
  const indexes = after.rels.filter((x) => x.kind === "index" && x.table === "mcq_messages").map((x) => x.name);
  const seen = rebuildLines(log, began).map((x) => ({ ...x, slices: slices.filter((y) => y.to >= x.from && y.from <= x.to).map((y) => y.opsS) }));
  const typical = median(slices.map((y) => y.opsS));
  const untouched = slices.filter((y) => !seen.some((x) => y.to >= x.from && y.from <= x.to)).map((y) => y.opsS);
  if (o.json) {
    console.log(JSON.stringify({ afterChecks: { secs: (after.at - before.at) / 1000, checks: checks(), rebuilds: seen, slices, medianOpsS: typical,
      rels: after.rels.map((x) => ({ name: x.name, empty: at(start, x.name), before: at(before, x.name), after: x.bytes })) } }));
    return;
  }
  console.log(`\nafter ${checks()} more of mcq's index checks (+${Math.round((after.at - before.at) / 1000)} s): ` +
    indexes.map((i) => `${i} ${kb(at(before, i))} -> ${kb(at(after, i))} (empty ${kb(at(start, i))})`).join(", ") +
    `; mcq_messages with its indexes ${kb(relBytes(before, "mcq_messages"))} -> ${kb(relBytes(after, "mcq_messages"))}; all of mcq's relations ${kb(before.total)} -> ${kb(after.total)} (empty ${kb(start.total)})`);
  for (const x of seen) {
    console.log(`  rebuilt ${x.index} ${x.before} -> ${x.after} in ${x.ms} ms, +${Math.round((x.to - began) / 1000)} s` + (o.underLoad
      ? `; one client's set/get pairs in the 1 s runs it overlapped: ${x.slices.map(n).join(", ") || "?"} ops/s (the ${untouched.length} runs it did not: median ${n(median(untouched))}, ` +
        `lowest ${n(Math.min(...untouched))}; every reply right)` : ""));
  }
  for (const l of log.slice(from).filter((x) => / (WARN|ERROR) /.test(x.line))) console.log(`  mcq: ${l.line}`);
}
