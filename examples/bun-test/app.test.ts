/**
 * The application's tests, against a real mcq: the mcq package's startServer() runs one in this
 * process for each test, on a free port, with nothing to download, start or clean up.
 */
import { afterEach, beforeEach, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Memcached from "memcached";
import { startServer, type Mcq } from "mcq";
import { enqueue, type Job } from "./producer";
import { work } from "./worker";

let mq: Mcq;
let client: Memcached;

beforeEach(async () => {
  mq = await startServer({ store: "memory" }); // a fresh, empty queue server for each test
  client = new Memcached(mq.address, { poolSize: 1, retries: 0 });
});

afterEach(async () => {
  client.end();
  await mq.stop();
});

const jobs: Job[] = [
  { image: "cat.png", width: 64 },
  { image: "dog.png", width: 128 },
  { image: "owl.png", width: 256 },
];

test("the worker handles every job the producer queued, in order", async () => {
  for (const job of jobs) await enqueue(client, job);
  const seen: Job[] = [];
  expect(await work(client, async (job) => void seen.push(job))).toBe(3);
  expect(seen).toEqual(jobs);
});

test("a job whose handler fails goes back to the queue and is handled again", async () => {
  for (const job of jobs) await enqueue(client, job);
  const seen: string[] = [];
  let failures = 0;
  const handled = await work(client, async (job) => {
    seen.push(job.image);
    if (job.image === "dog.png" && failures++ === 0) throw new Error("resize failed");
  });
  expect(handled).toBe(3);
  expect(seen).toEqual(["cat.png", "dog.png", "dog.png", "owl.png"]);
});

test("queued jobs survive a restart of mcq with a data directory", async () => {
  const dir = mkdtempSync(join(tmpdir(), "example-"));
  const first = await startServer({ store: { dir } });
  const producer = new Memcached(first.address, { poolSize: 1, retries: 0 });
  await enqueue(producer, jobs[0]!);
  producer.end();
  await first.stop();

  const second = await startServer({ store: { dir } });
  const worker = new Memcached(second.address, { poolSize: 1, retries: 0 });
  const seen: Job[] = [];
  expect(await work(worker, async (job) => void seen.push(job))).toBe(1);
  expect(seen).toEqual([jobs[0]!]);
  worker.end();
  await second.stop();
  rmSync(dir, { recursive: true, force: true });
});
