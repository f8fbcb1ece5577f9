/**
 * Issue 9, item 11: with 50,000 queues a /metrics scrape took 681 ms in one event-loop turn and
 * stalled every client for about 620 ms. Now the scrape is built in slices, so clients keep being
 * served during it, and only the --metrics-queues deepest queues get series of their own.
 */
import { afterAll, expect, test } from "bun:test";
import { metricsUrl, set, startServer, stopAll, type Client } from "./harness";

afterAll(stopAll);

const QUEUES = 50_000;
const LIMIT = 10;
/** deep0 … deep11 hold 2 … 13 messages: the 10 deepest are deep2 … deep11. */
const DEEP = 12;
/**
 * Far below the 620 ms of one whole-scrape turn, yet loose enough for a busy 2-core machine. On
 * one shared by other jobs, an idle event loop alone sometimes misses 100 ms, so the best of up to
 * three scrapes counts; one long turn per scrape, as before, fails all three.
 */
const MAX_STALL_MS = 100;
const TRIES = 3;

async function fill(c: Client): Promise<void> {
  for (let start = 0; start < QUEUES; start += 5000) {
    let text = "";
    for (let i = start; i < start + 5000; i++) text += set(`q${i}`, "x");
    expect(await c.call(text, 60_000)).toBe("STORED\r\n".repeat(5000));
  }
  let deep = "";
  for (let i = 0; i < DEEP; i++) deep += set(`deep${i}`, "yy").repeat(i + 2);
  await c.call(deep);
}

/** Sends `version` over and over until `stop` resolves; returns the longest round trip in ms. */
async function probe(c: Client, stop: Promise<unknown>): Promise<{ max: number; n: number }> {
  let done = false;
  void stop.finally(() => (done = true));
  let max = 0;
  let n = 0;
  while (!done) {
    const t = performance.now();
    c.write("version\r\n");
    await c.until((b) => b.toString("latin1").endsWith("\r\n"));
    max = Math.max(max, performance.now() - t);
    n++;
  }
  return { max, n };
}

const sample = (text: string, name: string, queue: string) =>
  Number(new RegExp(`^${name}\\{queue="${queue.replace(/[()]/g, "\\$&")}"\\} (\\S+)$`, "m").exec(text)?.[1]);

test("issue 9.11: a /metrics scrape over 50,000 queues stalls no client; --metrics-queues deepest get series", async () => {
  const s = await startServer(["--http", "127.0.0.1:0", "--sync", "normal", "--metrics-queues", String(LIMIT)]);
  const url = await metricsUrl(s.stderr);
  const c = await s.connect();
  await fill(c);
  let text = "";
  let best = Infinity;
  for (let i = 0; i < TRIES && best >= MAX_STALL_MS; i++) {
    const t0 = performance.now();
    const scrape = fetch(`${url}/metrics`).then((r) => r.text());
    const stall = await probe(c, scrape);
    text = await scrape;
    best = Math.min(best, stall.max);
    console.log(`scrape of ${QUEUES + DEEP} queues: ${(performance.now() - t0).toFixed(0)} ms; ` +
      `longest version round trip during it ${stall.max.toFixed(1)} ms over ${stall.n}`);
  }
  expect(best).toBeLessThan(MAX_STALL_MS);

  const listed = [...text.matchAll(/^mcq_queue_depth\{queue="([^"]*)"\} (\d+)$/gm)];
  const own = listed.filter(([, q]) => q !== "(other queues)");
  expect(own.map(([, q, n]) => [q, Number(n)])).toEqual(
    Array.from({ length: LIMIT }, (_, i) => [`deep${DEEP - 1 - i}`, DEEP + 1 - i]),
  );
  // The rest are summed into one series per metric: 50,000 queues of 1 and deep0, deep1 (2 + 3).
  expect(sample(text, "mcq_queue_depth", "(other queues)")).toBe(QUEUES + 5);
  expect(sample(text, "mcq_queue_bytes", "(other queues)")).toBe(QUEUES + 5 * 2);
  expect(sample(text, "mcq_queue_stored_total", "(other queues)")).toBe(QUEUES + 5);
  expect(text).toContain(`\nmcq_queues ${QUEUES + DEEP}\n`);
  expect(text).toContain(`\nmcq_queues_other ${QUEUES + 2}\n`);
  if (Bun.which("promtool") !== null) {
    const check = Bun.spawnSync(["promtool", "check", "metrics"], { stdin: Buffer.from(text) });
    expect(check.stdout.toString() + check.stderr.toString()).toBe("");
  }

  let stats: { queues: { name: string; depth: number }[]; otherQueues: { count: number; depth: number } } | null = null;
  best = Infinity;
  for (let i = 0; i < TRIES && best >= MAX_STALL_MS; i++) {
    const json = fetch(`${url}/stats.json`).then((r) => r.json());
    const stall = await probe(c, json);
    stats = (await json) as typeof stats;
    best = Math.min(best, stall.max);
    console.log(`/stats.json: longest version round trip ${stall.max.toFixed(1)} ms over ${stall.n}`);
  }
  expect(best).toBeLessThan(MAX_STALL_MS);
  expect(stats!.queues.map((q) => q.name)).toEqual(own.map(([, q]) => q!));
  expect(stats!.otherQueues).toMatchObject({ count: QUEUES + 2, depth: QUEUES + 5 });
}, 120_000);

test("issue 9.11: `stats queue` over 50,000 queues is built in slices: exact, sorted, and others are served meanwhile", async () => {
  const server = await startServer();
  const [c, p] = [await server.connect(), await server.connect()];
  await fill(c);
  const names = [...Array.from({ length: QUEUES }, (_, i) => `q${i}`), ...Array.from({ length: DEEP }, (_, i) => `deep${i}`)];
  names.sort((a, b) => (Buffer.from(a) < Buffer.from(b) ? -1 : a === b ? 0 : 1));
  const want = names.map((n) => `STAT ${n} ${n.startsWith("deep") ? Number(n.slice(4)) + 2 : 1}/0\r\n`).join("") + "END\r\n";
  // A set on another connection between slices is served before the listing ends, and the
  // listing is as of its request (the new queue is not in it).
  const order: string[] = [];
  const listing = c.call("stats queue\r\n", 60_000).finally(() => order.push("listing"));
  const during = p.call(set("zz-during", "x")).finally(() => order.push("set"));
  expect(await during).toBe("STORED\r\n");
  const got = await listing;
  expect(order).toEqual(["set", "listing"]);
  expect(got.length).toBe(want.length);
  expect(got).toBe(want);
  expect(await c.call("stats queue zz-during\r\n")).toContain("STAT total 1\r\n");
  await server.kill();
}, 120_000);
