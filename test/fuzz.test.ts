/**
 * Hostile input, seeded so a failure can be replayed (FUZZ_SEED=<n> bun test test/fuzz.test.ts;
 * `bun run fuzz` runs many more rounds). Random bytes and mutations of valid commands (corrupted
 * and huge lengths, truncated lines, one-byte splits) go to the parser and to a live server. The
 * parser must never throw and must give the same requests however the bytes are split; the
 * server must never die, must keep serving well-formed clients, and its memory must stay bounded.
 * The live server runs on each store (test/e2e/stores.ts: Postgres too when MCQ_TEST_PG is set)
 * with the queue features on (limits with discard_old, dead letters, fanout, leases), so the
 * feature options reach their store paths; on Postgres a node started afterwards must then read
 * the same counters as the fuzzed one (every count is in Postgres, none only in a node's memory).
 */
import { afterAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { createFramer } from "../src/protocol/framer";
import type { Request } from "../src/protocol/types";
import { Client, startServer, stopAll, tempDir, type Running } from "./e2e/harness";
import { dropStoreSchemas, startOn, storeArgs, STORES } from "./e2e/stores";
import { random } from "./random";

const SEED = Number(process.env.FUZZ_SEED ?? 20261124);
const ROUNDS = Number(process.env.FUZZ_ROUNDS ?? 300);

afterAll(async () => {
  await stopAll();
  await dropStoreSchemas();
});

const VALID = [
  "set q 0 0 5\r\nhello\r\n",
  "set q 4294967295 0 0 noreply\r\n\r\n",
  "get q\r\n",
  "gets q q2 q3\r\n",
  "get q/open\r\n",
  "get q/close/open\r\n",
  "get q/abort\r\n",
  "get q/peek/t=10\r\n",
  // Issue 12's options.
  "set q/delay=20 0 0 1\r\nd\r\n",
  "set q/id=tok 0 0 1\r\ni\r\n",
  "set q/delay=5/id=t2 0 0 1 noreply\r\nb\r\n",
  "get q/abort/delay=15\r\n",
  "get q/touch\r\n",
  "get q/open/t=5\r\n",
  "set q/delay=2592000001 0 0 1\r\nx\r\n",
  `set q/id=${"t".repeat(129)} 0 0 1\r\nx\r\n`,
  "set q+c 0 0 1\r\nc\r\n",
  "get q+c/open\r\n",
  "set q/id=f 0 0 3\r\nfan\r\n",
  "redrive q q2\r\n",
  "redrive q.dlq q\r\n",
  "delete q\r\n",
  "flush q noreply\r\n",
  "stats\r\n",
  "stats queue\r\n",
  "stats queue q\r\n",
  "version\r\n",
  "verbosity 1\r\n",
];

function fuzzInput(rnd: () => number): Buffer {
  const pick = <T>(xs: T[]) => xs[Math.floor(rnd() * xs.length)]!;
  const parts: Buffer[] = [];
  const count = 1 + Math.floor(rnd() * 6);
  for (let i = 0; i < count; i++) {
    const r = rnd();
    let text: Buffer;
    if (r < 0.2) {
      text = Buffer.from(Array.from({ length: Math.floor(rnd() * 64) }, () => Math.floor(rnd() * 256)));
    } else if (r < 0.35) {
      const n = pick(["-1", "-3", "-100", "2147483647", "2147483648", "99999999999999999999", "5x", "", "0x10", "1e3"]);
      text = Buffer.from(`set q ${pick(["0", "-1", "abc"])} ${pick(["0", "abc", "-5"])} ${n}\r\nhello\r\n`);
    } else if (r < 0.45) {
      text = Buffer.from(`set q 0 0 ${Math.floor(rnd() * 3_000_000)}\r\n`); // a huge declared length
    } else if (r < 0.5) {
      text = Buffer.from("get " + "k".repeat(Math.floor(rnd() * 10_000))); // maybe an endless line
    } else {
      text = Buffer.from(pick(VALID));
      // Mutate: flip, drop or insert a few bytes, or cut the command short.
      const bytes = [...text];
      for (let m = Math.floor(rnd() * 4); m > 0; m--) {
        const at = Math.floor(rnd() * (bytes.length + 1));
        const op = rnd();
        if (op < 0.33) bytes[at] = Math.floor(rnd() * 256);
        else if (op < 0.66) bytes.splice(at, 1);
        else bytes.splice(at, 0, pick([13, 10, 32, 47, 48, 0]));
      }
      if (rnd() < 0.2) bytes.length = Math.floor(rnd() * bytes.length);
      text = Buffer.from(bytes.filter((b) => b !== undefined));
    }
    parts.push(text);
  }
  return Buffer.concat(parts);
}

/** Feeds chunks to a framer; stops at a request that closes the connection, as the server does. */
function parseAll(chunks: Buffer[]): Request[] {
  const framer = createFramer({ maxLine: 8192, maxBody: 1 << 20 });
  const out: Request[] = [];
  for (const chunk of chunks) {
    framer.push(chunk);
    for (let r = framer.next(); r !== null; r = framer.next()) {
      out.push(r.kind === "set" ? { ...r, data: Buffer.from(r.data) } : r);
      if ((r.kind === "error" && r.close) || r.kind === "quit") return out;
    }
  }
  return out;
}

test(`parser: ${ROUNDS * 10} hostile inputs never throw and split the same way (seed ${SEED})`, () => {
  const rnd = random(SEED);
  for (let round = 0; round < ROUNDS * 10; round++) {
    const input = fuzzInput(rnd);
    const whole = parseAll([input]);
    const cuts = [0, ...Array.from({ length: 3 }, () => Math.floor(rnd() * input.length)), input.length].sort((a, b) => a - b);
    const pieces = cuts.slice(1).map((end, i) => input.subarray(cuts[i], end));
    expect(parseAll(pieces)).toEqual(whole);
    if (round % 50 === 0) expect(parseAll([...input].map((b) => Buffer.from([b])))).toEqual(whole);
  }
});

/** The queue features on: a small limit with discard_old, dead letters after 2 deliveries, fanout, a lease. */
const FEATURES = '[queues."q*"]\nmax_items = 5\ndiscard_old = true\nmax_deliveries = 2\nfanout = true\nopen_timeout = 50\n';

describe.each(STORES)("on %s", (store) => test(`live server: ${ROUNDS} hostile connections, then a well-formed client is served (seed ${SEED})`, async () => {
  const config = join(tempDir(), "mcq.toml");
  await Bun.write(config, FEATURES);
  const args = ["-B", "1048576", "--config", config];
  const server: Running = await startOn(store, args);
  const rnd = random(SEED + 1);
  const rss = () => Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${server.proc.pid}/status`, "utf8"))?.[1]) * 1024;
  let peak = 0;
  for (let round = 0; round < ROUNDS; round++) {
    const hostile = await Client.connect(server.port);
    const input = fuzzInput(rnd);
    // Sometimes one byte per write, sometimes all at once.
    if (rnd() < 0.2) for (const b of input.subarray(0, 200)) hostile.write(Buffer.from([b]));
    else hostile.write(input);
    if (rnd() < 0.5) hostile.close();
    else setTimeout(() => hostile.close(), 5);
    if (round % 25 === 24) {
      const good = await server.connect();
      const q = `fz${round}`;
      expect(await good.call(`set ${q} 0 0 2\r\nok\r\nget ${q}\r\n`)).toBe(`STORED\r\nVALUE ${q} 0 2\r\nok\r\nEND\r\n`);
      good.close();
      peak = Math.max(peak, rss());
    }
  }
  expect(server.proc.exitCode).toBeNull();
  expect(peak).toBeLessThan(300 * 1024 * 1024);
  if (store === "postgres") await sameCounters(server, args);
  expect(await server.kill()).toBe(0);
}, 120_000));

const COUNTED = ["total", "discarded", "deduplicated", "fanout_refused", "dead_lettered", "dead_letter_skipped"];

/**
 * A second node on the same Postgres reads the counters the fuzzed node reports. The last hostile
 * connections may still be closing on the server (a close returns open messages, which may move
 * to a dead-letter queue): the two are read again until they agree, for at most 5 s.
 */
async function sameCounters(server: Running, args: string[]): Promise<void> {
  const other = await startServer([...args, ...storeArgs("postgres", server.home)], join(tempDir(), "other"));
  const [a, b] = [await server.connect(), await other.connect()];
  const read = async (c: Client) => {
    let out = "";
    for (const q of ["q", "q2", "q+c", "q.dlq"]) {
      const lines = (await c.call(`stats queue ${q}\r\n`)).split("\r\n");
      out += `${q}: ${lines.filter((l) => COUNTED.includes(l.split(" ")[1] ?? "")).join(", ")}\n`;
    }
    return out;
  };
  let [want, got] = [await read(a), await read(b)];
  for (const until = Date.now() + 5000; got !== want && Date.now() < until; await Bun.sleep(50)) [want, got] = [await read(a), await read(b)];
  expect(want).toContain("STAT total ");
  expect(got).toBe(want);
  expect(await other.kill()).toBe(0);
}
