/**
 * Issue 15, design (a), idealised: the minimal server (scripts/bench/minimal.ts: in-memory queues,
 * just enough parsing for `mcbench -m pair`) plus durability in batches, to measure what moving
 * SQLite's commits into a Worker can gain at most. Each event-loop turn's sets and gets form one
 * batch: its sets are INSERTed and the ids its gets took are DELETEd in one SQLite transaction on a
 * WAL database, committed with `PRAGMA synchronous` FULL or NORMAL (durable-batch.ts).
 *
 *   --durable worker  the batch (bodies packed into one ArrayBuffer, transferred) goes to a Worker
 *                     (durable-worker.ts) that commits it and answers "batch n durable"; meanwhile the
 *                     main thread reads, parses and runs the next requests; up to --inflight batches
 *                     (default 2) are in flight, and while they are, the open batch keeps growing.
 *   --durable main    the same SQL, committed on the main thread at the end of the turn (the baseline,
 *                     as mcq's SQLite store does today).
 *   --durable none    no SQL: replies are held to the end of the turn only (the batching's own cost).
 *
 * The rule is mcq's: a reply leaves only once its own batch is durable. Batches become durable in
 * order, so a get may take a message set by an earlier batch still in flight: its reply waits for its
 * own batch, which is durable only after that earlier one. A set and a get of the same message in one
 * batch write nothing (as in mcq, where such a message never reaches the table).
 * Idealised against mcq: one table without an index, no counter rows, no limits, no leases, no
 * stats, no failure path beyond exiting (a failed commit ends the process with exit code 1).
 *
 *   bun scripts/bench/minimal-durable.ts -H DIR [--durable worker|main|none] [--sync full|normal]
 *                                       [--inflight 2] [-p PORT] [-l 127.0.0.1]
 *   prints "minimal-durable listening on HOST:PORT"; the database is DIR/minimal-durable.db
 */
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { openDurable, pack, type Durable, type SetRow, type Sync } from "./durable-batch";

const argv = process.argv.slice(2);
const option = (name: string, fallback: string) => (argv.includes(name) ? argv[argv.indexOf(name) + 1] ?? "" : fallback);
function fail(message: string, code = 2): never {
  process.stderr.write(`minimal-durable: ${message}\n`);
  process.exit(code);
}
const MODE = option("--durable", "worker");
const SYNC = option("--sync", "full");
const INFLIGHT = option("--inflight", "2");
const PORT = option("-p", "0");
const HOST = option("-l", "127.0.0.1");
const HOME = option("-H", "");
if (MODE !== "worker" && MODE !== "main" && MODE !== "none") fail(`--durable must be worker, main or none, not ${MODE}`);
if (SYNC !== "full" && SYNC !== "normal") fail(`--sync must be full or normal, not ${SYNC}`);
if (!/^[1-9]\d*$/.test(INFLIGHT)) fail(`--inflight must be a positive integer, not ${INFLIGHT}`);
if (!/^\d+$/.test(PORT) || Number(PORT) > 65535) fail(`-p must be a port number, not ${PORT}`);
if (MODE !== "none" && HOME === "") fail("needs -H DIR for the database");
const MAX_INFLIGHT = MODE === "worker" ? Number(INFLIGHT) : 1;

interface Message extends SetRow {
  flagsText: string;
}

/** A FIFO with a moving head: shift() on a long array is O(n). */
class Queue {
  items: Message[] = [];
  head = 0;
  push(m: Message): void {
    this.items.push(m);
  }
  take(): Message | undefined {
    if (this.head === this.items.length) return undefined;
    const m = this.items[this.head++]!;
    if (this.head === this.items.length) (this.items = []), (this.head = 0);
    return m;
  }
}

interface State {
  /** Bytes of a request split across chunks. */
  rest: Buffer | null;
  /** Replies the socket did not take yet; reading waits for them (no unbounded output). */
  unsent: Buffer | null;
  closed: boolean;
}
type Socket = Bun.Socket<State>;

/** One batch: its changes, and its replies by connection, which leave once it is durable. */
interface Batch {
  n: number;
  /** Ids are given in order, so a set of this batch is sets[id - firstId]. */
  firstId: number;
  sets: Message[];
  /** skip[i]: sets[i] was taken in this same batch, so neither it nor its take is written. */
  skip: boolean[];
  takes: number[];
  replies: Map<Socket, Buffer[]>;
  /** When it was closed (performance.now()), for the stats. */
  closedAt: number;
}

const queues = new Map<string, Queue>();
const STORED = Buffer.from("STORED\r\n");
const END = Buffer.from("END\r\n");
const ERROR = Buffer.from("ERROR\r\n");
let nextId = 1;
let nextBatch = 1;
let open: Batch | null = null;
/** Batches handed to the Worker, oldest first; they become durable in this order. */
const inFlight: Batch[] = [];
let turnScheduled = false;
let stopping = false;
/** Printed on SIGTERM: how large the batches were and how long making them durable took. */
const stats = { batches: 0, requests: 0, rowsWritten: 0, rowsDeleted: 0, durableMs: 0 };

function openBatch(): Batch {
  return (open ??= { n: nextBatch++, firstId: nextId, sets: [], skip: [], takes: [], replies: new Map(), closedAt: 0 });
}

/** Parses and runs every complete request in `input` into the open batch; returns the bytes used. */
function run(input: Buffer, out: Buffer[]): number {
  let at = 0;
  while (at < input.length) {
    const eol = input.indexOf("\r\n", at);
    if (eol < 0) break;
    const words = input.toString("latin1", at, eol).split(" ");
    stats.requests++; // a set whose body is not all here is counted again when it is: rare, stats only
    if (words[0] === "set" && words.length >= 5) {
      const bytes = Number(words[4]);
      const end = eol + 2 + bytes;
      if (!Number.isInteger(bytes) || bytes < 0) {
        out.push(ERROR);
        at = eol + 2;
        continue;
      }
      if (input.length < end + 2) break; // the body is not all here yet
      let q = queues.get(words[1]!);
      if (q === undefined) queues.set(words[1]!, (q = new Queue()));
      const batch = openBatch();
      // A copy: the chunk is Bun's and is reused after this callback.
      const m: Message = { id: nextId++, queue: words[1]!, flags: Number(words[2]) >>> 0, flagsText: words[2]!, body: Buffer.from(input.subarray(eol + 2, end)) };
      q.push(m);
      batch.sets.push(m);
      batch.skip.push(false);
      out.push(STORED);
      at = end + 2;
    } else if (words[0] === "get" && words.length === 2) {
      const m = queues.get(words[1]!)?.take();
      if (m !== undefined) {
        const batch = openBatch();
        if (m.id >= batch.firstId) batch.skip[m.id - batch.firstId] = true;
        else batch.takes.push(m.id);
        out.push(Buffer.from(`VALUE ${words[1]} ${m.flagsText} ${m.body.length}\r\n`, "latin1"), m.body, Buffer.from("\r\nEND\r\n"));
      } else out.push(END);
      at = eol + 2;
    } else {
      out.push(ERROR);
      at = eol + 2;
    }
  }
  return at;
}

function send(socket: Socket, data: Buffer): void {
  const state = socket.data;
  if (state.closed) return;
  if (state.unsent !== null) {
    state.unsent = Buffer.concat([state.unsent, data]);
    return;
  }
  const n = socket.write(data);
  if (n < data.length) {
    state.unsent = data.subarray(Math.max(n, 0));
    socket.pause();
  }
}

/** The batch is durable: each connection's replies of it leave in one write. */
function release(batch: Batch): void {
  stats.batches++;
  stats.durableMs += performance.now() - batch.closedAt;
  for (const [socket, replies] of batch.replies) send(socket, replies.length === 1 ? replies[0]! : Buffer.concat(replies));
}

let durable: Durable | null = null;
let worker: Worker | null = null;

/** Closes the open batch and makes it durable, if a slot is free; otherwise it keeps growing. */
function dispatch(): void {
  if (open === null || inFlight.length >= MAX_INFLIGHT) return;
  const batch = open;
  open = null;
  batch.closedAt = performance.now();
  stats.rowsDeleted += batch.takes.length;
  for (const skipped of batch.skip) if (!skipped) stats.rowsWritten++;
  if (worker !== null) {
    if (inFlight.length === 0 && batch.takes.length === 0 && !batch.skip.includes(false)) return release(batch); // nothing to make durable
    inFlight.push(batch);
    const bytes = pack(batch.sets, batch.skip, batch.takes);
    worker.postMessage({ n: batch.n, bytes }, [bytes]);
    return;
  }
  if (durable !== null) {
    const live = batch.skip.includes(true) ? batch.sets.filter((_, i) => !batch.skip[i]) : batch.sets;
    try {
      durable.apply(live, batch.takes);
    } catch (e) {
      fail(`batch ${batch.n} failed to commit: ${(e as Error).message}`, 1);
    }
  }
  release(batch);
}

function onDurable(event: MessageEvent): void {
  const m = event.data as { n: number; error?: string };
  const batch = inFlight.shift();
  if (m.error !== undefined) fail(`batch ${m.n} failed to commit: ${m.error}`, 1);
  if (batch === undefined || batch.n !== m.n) fail(`the Worker answered batch ${m.n}, expected ${batch?.n}`, 1);
  release(batch);
  if (stopping && inFlight.length === 0) process.exit(0);
  dispatch(); // the batch that grew meanwhile commits as soon as a slot is free
}

/** Starts the Worker and waits until it has opened the database. */
async function startWorker(path: string): Promise<Worker> {
  const w = new Worker(new URL("./durable-worker.ts", import.meta.url));
  w.onerror = (e) => fail(`the Worker failed: ${e.message}`, 1);
  const answer = await new Promise<{ ready?: true; error?: string }>((resolve) => {
    w.onmessage = (e) => resolve(e.data);
    w.postMessage({ path, sync: SYNC as Sync });
  });
  if (answer.error !== undefined) fail(answer.error, 1);
  w.onmessage = onDurable;
  return w;
}

if (MODE !== "none") {
  try {
    mkdirSync(HOME, { recursive: true });
  } catch (e) {
    fail(`cannot create ${HOME}: ${(e as Error).message}`, 1);
  }
  const path = join(HOME, "minimal-durable.db");
  if (MODE === "worker") worker = await startWorker(path);
  else {
    try {
      durable = openDurable(path, SYNC as Sync);
    } catch (e) {
      fail(`cannot open ${path}: ${(e as Error).message}`, 1);
    }
  }
}

function endTurn(): void {
  turnScheduled = false;
  dispatch();
}

const server = Bun.listen<State>({
  hostname: HOST,
  port: Number(PORT),
  socket: {
    open(socket) {
      socket.data = { rest: null, unsent: null, closed: false };
    },
    close(socket) {
      socket.data.closed = true;
    },
    data(socket, chunk) {
      const state = socket.data;
      const input = state.rest === null ? chunk : Buffer.concat([state.rest, chunk]);
      const out: Buffer[] = [];
      const used = run(input, out);
      state.rest = used === input.length ? null : Buffer.from(input.subarray(used));
      if (out.length === 0) return;
      const batch = openBatch(); // a miss changes nothing, but its reply keeps its place in the order
      const held = batch.replies.get(socket);
      if (held === undefined) batch.replies.set(socket, out);
      else held.push(...out);
      if (!turnScheduled) (turnScheduled = true), setImmediate(endTurn);
    },
    drain(socket) {
      const unsent = socket.data.unsent;
      if (unsent === null) return;
      socket.data.unsent = null;
      send(socket, unsent);
      if (socket.data.unsent === null) socket.resume();
    },
  },
});

console.log(`minimal-durable listening on ${HOST}:${server.port}`);
process.on("SIGTERM", () => {
  server.stop(true);
  const per = (x: number) => (stats.batches === 0 ? 0 : x / stats.batches).toFixed(2);
  process.stderr.write(`minimal-durable: ${stats.batches} batches, ${per(stats.requests)} requests, ${per(stats.rowsWritten)} rows written and ` +
    `${per(stats.rowsDeleted)} deleted a batch; ${((stats.durableMs * 1000) / Math.max(1, stats.batches)).toFixed(0)} us from closing a batch to its replies\n`);
  stopping = true;
  durable?.close();
  // What is in flight was committed by the Worker or will be; wait for its answers, then exit.
  if (inFlight.length === 0) process.exit(0);
});
