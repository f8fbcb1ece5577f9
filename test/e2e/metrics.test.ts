/** --http: /metrics in Prometheus text (checked by promtool), /stats.json, /healthz. */
import { afterAll, expect, test } from "bun:test";
import { metricsUrl, set, startServer, stopAll } from "./harness";

afterAll(stopAll);

const hasPromtool = Bun.which("promtool") !== null;
if (!hasPromtool && process.env.CI) throw new Error("promtool is missing in CI: apt-get install prometheus");

test("/metrics, /stats.json and /healthz show the same numbers", async () => {
  const s = await startServer(["--http", "127.0.0.1:0"]);
  const url = await metricsUrl(s.stderr);
  const c = await s.connect();
  await c.call(set("mq", "a") + set("mq", "b") + set('odd"name\\', "c") + "get mq\r\nget nothing\r\nget mq/open\r\n");
  const text = await (await fetch(`${url}/metrics`)).text();
  for (const line of [
    'mcq_queue_depth{queue="mq"} 1',
    'mcq_queue_open{queue="mq"} 1',
    'mcq_queue_stored_total{queue="mq"} 2',
    'mcq_queue_fetched_total{queue="mq"} 1',
    'mcq_queue_depth{queue="odd\\"name\\\\"} 1',
    'mcq_commands_total{command="set"} 3',
    "mcq_get_hits_total 2",
    "mcq_get_misses_total 1",
    "mcq_connections 1",
    "mcq_store_writable 1",
  ]) expect(text).toContain(line + "\n");
  expect(text).toMatch(/^mcq_commit_seconds_bucket\{le="\+Inf"\} [1-9]\d*$/m);
  expect(text).toMatch(/^mcq_data_dir_bytes [1-9]\d*$/m);
  const json = (await (await fetch(`${url}/stats.json`)).json()) as { queues: { name: string }[]; getHits: number };
  expect(json.queues.find((q: { name: string }) => q.name === "mq")).toMatchObject({ depth: 1, open: 1, total: 2, fetched: 1 });
  expect(json.getHits).toBe(2);
  const health = await fetch(`${url}/healthz`);
  expect([health.status, await health.text()]).toEqual([200, "ok\n"]);
  expect((await fetch(`${url}/nope`)).status).toBe(404);
  if (hasPromtool) {
    const check = Bun.spawnSync(["promtool", "check", "metrics"], { stdin: Buffer.from(text) });
    expect(check.stdout.toString() + check.stderr.toString()).toBe("");
    expect(check.exitCode).toBe(0);
  } else console.warn("promtool not installed (apt-get install prometheus): the exposition format was not linted");
});
