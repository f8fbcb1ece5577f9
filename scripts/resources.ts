/**
 * Memory and disk under a large backlog: the server's RSS while `messages` small messages are
 * queued, and the data directory's size after `fillMb` of 1 MB messages are stored and drained.
 *
 *   bun run resources                                   1M messages, a 1 GB fill and drain
 *   bun run resources --messages 200000 --fill-mb 200   the short form, as npm test runs it
 *   bun run resources -m 16                             any other flag is the server's
 */
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { startServer, type Running } from "../test/e2e/harness";

export interface ResourceReport {
  messages: number;
  rssIdleMb: number;
  rssQueuedMb: number;
  fillMb: number;
  rssFillPeakMb: number;
  dataDirFullMb: number;
  dataDirDrainedMb: number;
  /** How long after the last get the data directory reached its drained size. */
  shrinkMs: number;
}

const MB = 1024 * 1024;
const rss = (s: Running) => Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${s.proc.pid}/status`, "utf8"))![1]) * 1024;
const du = (dir: string) => readdirSync(dir).reduce((n, f) => n + statSync(join(dir, f)).blocks * 512, 0);
const mb = (n: number) => Math.round((n / MB) * 10) / 10;

export async function resources(
  messages: number,
  fillMb: number,
  serverArgs: string[] = [],
  log = (_: string) => {},
): Promise<ResourceReport> {
  const s = await startServer(["--sync", "normal", ...serverArgs]);
  const c = await s.connect();
  await c.call("stats\r\n");
  const rssIdle = rss(s);

  // Small messages, 1000 per pipelined round trip.
  const body = "m".repeat(100);
  const batch = `set backlog 0 0 100\r\n${body}\r\n`.repeat(1000);
  for (let n = 0; n < messages; n += 1000) {
    await c.call(batch, 60_000);
    if (n % 200_000 === 0) log(`${n} queued, RSS ${mb(rss(s))} MB`);
  }
  const rssQueued = rss(s);
  await c.call("delete backlog\r\n", 120_000);

  // Large messages: fill, then drain, watching RSS.
  const big = "b".repeat(MB - 64);
  let peak = 0;
  for (let i = 0; i < fillMb; i += 8) {
    await c.call(`set fill 0 0 ${big.length}\r\n${big}\r\n`.repeat(8), 60_000);
    peak = Math.max(peak, rss(s));
  }
  const full = du(s.home);
  log(`filled ${fillMb} MB: data dir ${mb(full)} MB`);
  for (let i = 0; i < fillMb; i += 8) {
    await c.call("get fill\r\n".repeat(8), 60_000);
    peak = Math.max(peak, rss(s));
  }
  const drainedAt = performance.now();
  const deadline = Date.now() + 30_000;
  while (du(s.home) > 10 * MB && Date.now() < deadline) await Bun.sleep(100);
  const report: ResourceReport = {
    messages,
    rssIdleMb: mb(rssIdle),
    rssQueuedMb: mb(rssQueued),
    fillMb,
    rssFillPeakMb: mb(peak),
    dataDirFullMb: mb(full),
    dataDirDrainedMb: mb(du(s.home)),
    shrinkMs: Math.round(performance.now() - drainedAt),
  };
  log(`data dir after the drain: ${readdirSync(s.home).map((f) => `${f} ${statSync(join(s.home, f)).size}`).join(", ")}`);
  await s.kill();
  return report;
}

if (import.meta.main) {
  const argv = process.argv.slice(2);
  const arg = (flag: string, fallback: number) => (argv.includes(flag) ? Number(argv[argv.indexOf(flag) + 1]) : fallback);
  // Everything else is for the server (bun drops a "--" before it reaches process.argv).
  const extra = argv.filter((a, i) => a !== "--" && !["--messages", "--fill-mb"].includes(a) && !["--messages", "--fill-mb"].includes(argv[i - 1]!));
  const report = await resources(arg("--messages", 1_000_000), arg("--fill-mb", 1024), extra, console.log);
  console.log(JSON.stringify(report));
}
