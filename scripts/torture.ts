/**
 * Crash torture: producers number their messages and note which were acknowledged with
 * STORED, while two kinds of consumer take them at the same time, and the server is killed with
 * kill -9 at random moments and restarted on the same data directory.
 *
 * - Reliable consumers use /open, then /close. Nothing acknowledged may be lost, none may be
 *   delivered again once its close was acknowledged, none held by two consumers at once.
 * - Plain consumers use `get` (at most once): the server deletes a message in a committed
 *   transaction before its VALUE leaves. So a message in a complete plain reply (VALUE … END) is
 *   never delivered again, to anyone. A plain get whose reply the kill cut may have taken a
 *   message no one saw: such losses are allowed, but only as many as those gets (see
 *   unexplainedLosses), each must have been in the server when it died, and the server's own
 *   exact counters must show it consumed at least that many messages no one saw (takenUnseen).
 *
 * Every consumer must see each producer's messages in order between restarts.
 *
 *   bun run torture                     10 kills, --sync full and --sync normal
 *   bun run torture --kills 3 --sync normal
 * test/e2e/torture.test.ts runs a short form (3 kills) in `npm test`.
 */
import { join } from "node:path";
import { Client, cleanUpOnExit, startServer, tempDir, type Running } from "../test/e2e/harness";

export interface TortureOptions {
  kills: number;
  sync: "full" | "normal";
  producers?: number;
  /** Reliable consumers (/close/open). */
  consumers?: number;
  /** Consumers with plain gets. */
  plainConsumers?: number;
  log?: (line: string) => void;
}

export interface TortureReport {
  sync: string;
  kills: number;
  acknowledged: number;
  /** Acknowledged or not, delivered to anyone (each message once). */
  delivered: number;
  /** Of those, delivered in a complete plain get reply. */
  plainDelivered: number;
  /** Acknowledged, never delivered, not in the queue at the end. */
  lost: number;
  /** Plain gets sent whose reply was not complete when the server was killed (all kills). */
  inFlightAtKill: number;
  /**
   * Messages the server stored and consumed that no one saw: its `total` after the drain (exact
   * after a crash) minus `delivered`. Only cut plain gets take such messages.
   */
  takenUnseen: number;
  /** Losses those in-flight plain gets cannot account for: must be 0. */
  unexplainedLost: number;
  /** Delivered again after its close was acknowledged or after a plain get, or to two consumers at once. */
  duplicates: number;
  /** Delivered again because the server died before its close committed: allowed. */
  redelivered: number;
  outOfOrder: number;
  unknown: number;
  /** Messages left in the queue after the drain: 0, or the drain timed out. */
  queuedAtEnd: number;
}

const QUEUE = "torture";
const BODY = 100;
/** Each wait for a reply, a restart or the drain gives up after this long. */
const PATIENCE_MS = 20_000;

/** What the clients saw, shared by every worker. */
interface Ledger {
  /** Acknowledged message → the life of the server its set went to (life i ends at kill i). */
  acknowledged: Map<string, number>;
  delivered: Set<string>;
  confirmed: Set<string>;
  /** Open message → the life of the server that holds it open. */
  heldOpen: Map<string, number>;
  plainDelivered: Set<string>;
  /** Per kill i: plain gets sent to life i whose whole reply had not arrived when it died. */
  inFlight: number[];
  duplicates: number;
  redelivered: number;
  outOfOrder: number;
  unknown: number;
}

/** A connection to one life of the server. */
interface Link {
  c: Client;
  life: number;
}

/** The server being killed and restarted, and the flags that stop the workers. */
interface Rig {
  current: { server: Running; life: number };
  /** Resolves when the current server is up (pending during a restart). */
  up: Promise<void>;
  /** Lives 0 … killed-1 were killed (the count rises just before the kill -9). */
  killed: number;
  producing: boolean;
  consuming: boolean;
  producers: number;
}

/** A connection to the current server; waits through a restart. */
async function connect(rig: Rig): Promise<Link> {
  const deadline = Date.now() + PATIENCE_MS;
  for (;;) {
    await rig.up;
    const { server, life } = rig.current;
    try {
      return { c: await server.connect(), life };
    } catch (e) {
      if (Date.now() > deadline) throw e;
      await Bun.sleep(20);
    }
  }
}

/** A failed exchange is allowed only if its server was killed; anything else is rethrown. */
function expectKilled(rig: Rig, link: Link, e: unknown): void {
  if (!link.c.closed) throw e;
  if (link.life >= rig.killed) throw new Error(`the server (life ${link.life}) closed a connection without being killed`);
}

/** Checks a message's id and order as one consumer connection receives it; returns the id. */
function observe(ledger: Ledger, rig: Rig, last: Map<number, number>, p: number, seq: number): string {
  if (p >= rig.producers) ledger.unknown++;
  if (seq <= (last.get(p) ?? -1)) ledger.outOfOrder++;
  last.set(p, seq);
  return `${p}:${seq}`;
}

async function producer(rig: Rig, ledger: Ledger, p: number): Promise<void> {
  let seq = 0;
  let link = await connect(rig);
  while (rig.producing) {
    const body = `${p}:${seq}`.padEnd(BODY, ".");
    try {
      link.c.write(`set ${QUEUE} 0 0 ${body.length}\r\n${body}\r\n`);
      const reply = (await link.c.until((b) => b.includes("\r\n"), PATIENCE_MS)).toString();
      if (reply !== "STORED\r\n") throw new Error(`producer ${p}: unexpected reply ${JSON.stringify(reply)}`);
      ledger.acknowledged.set(`${p}:${seq}`, link.life);
      seq++;
      continue;
    } catch (e) {
      expectKilled(rig, link, e);
    }
    // The server died with this set in flight: it may or may not be stored. Send the next
    // number, so an unacknowledged message is never confused with an acknowledged one.
    seq++;
    link = await connect(rig);
  }
  link.c.close();
}

async function reliableConsumer(rig: Rig, ledger: Ledger, k: number): Promise<void> {
  let link = await connect(rig);
  let last = new Map<number, number>(); // producer → last seq seen on this connection
  let open: string | null = null;
  // Each request confirms the message this connection has open (if any) and opens the next.
  while (rig.consuming || open !== null) {
    try {
      link.c.write(rig.consuming ? `get ${QUEUE}/close/open/t=100\r\n` : `get ${QUEUE}/close\r\n`);
      const reply = (await link.c.until((b) => b.toString("latin1").endsWith("END\r\n"), PATIENCE_MS)).toString("latin1");
      if (!reply.endsWith("END\r\n")) throw new Error("closed");
      if (open !== null) {
        ledger.heldOpen.delete(open);
        ledger.confirmed.add(open);
        open = null;
      }
      const m = /^VALUE \S+ 0 100\r\n(\d+):(\d+)\.*\r\n/.exec(reply);
      if (m === null) {
        if (reply !== "END\r\n") throw new Error(`consumer ${k}: unexpected reply ${JSON.stringify(reply)}`);
        continue;
      }
      const id = observe(ledger, rig, last, Number(m[1]), Number(m[2]));
      const holder = ledger.heldOpen.get(id);
      // Held open by a server that is still alive, confirmed, or taken by a plain get: twice.
      if (ledger.confirmed.has(id) || ledger.plainDelivered.has(id) || holder === link.life) ledger.duplicates++;
      else if (ledger.delivered.has(id)) ledger.redelivered++;
      ledger.delivered.add(id);
      ledger.heldOpen.set(id, link.life);
      open = id;
    } catch (e) {
      expectKilled(rig, link, e);
      // The server died: an unconfirmed message comes back and may be delivered again.
      if (open !== null) ledger.heldOpen.delete(open);
      open = null;
      last = new Map();
      link = await connect(rig);
    }
  }
  link.c.close();
}

const PLAIN_VALUE = new RegExp(`^VALUE ${QUEUE}(?:/t=100)? 0 ${BODY}\\r\\n(\\d+):(\\d+)\\.*\\r\\nEND\\r\\n$`);

/**
 * Plain gets, pipelined 1 to 3 at a time: a blocking one first (it may wait for a set), plain
 * ones behind it. Each reply carries at most one VALUE, so each get takes at most one message.
 */
async function plainConsumer(rig: Rig, ledger: Ledger): Promise<void> {
  let link = await connect(rig);
  let last = new Map<number, number>();
  while (rig.consuming) {
    if (link.life < rig.killed) {
      // Its server is dead: what would be sent now cannot be in flight at its kill.
      link.c.close();
      last = new Map();
      link = await connect(rig);
      continue;
    }
    const depth = 1 + Math.floor(Math.random() * 3);
    let answered = 0;
    let text = ""; // received bytes not yet a whole reply
    link.c.write(`get ${QUEUE}/t=100\r\n` + `get ${QUEUE}\r\n`.repeat(depth - 1));
    try {
      while (answered < depth) {
        text += (await link.c.until((b) => b.length > 0, PATIENCE_MS)).toString("latin1");
        // END\r\n cannot occur inside a reply's body (digits, a colon and dots).
        for (let end = text.indexOf("END\r\n"); end >= 0; end = text.indexOf("END\r\n")) {
          plainReply(ledger, rig, link, last, text.slice(0, end + 5));
          text = text.slice(end + 5);
          answered++;
        }
        if (answered < depth && link.c.closed) throw new Error("closed");
      }
    } catch (e) {
      expectKilled(rig, link, e);
      // Sent, reply not whole: each may have taken a message that no one will see.
      ledger.inFlight[link.life] = (ledger.inFlight[link.life] ?? 0) + depth - answered;
      last = new Map();
      link = await connect(rig);
    }
  }
  link.c.close();
}

/** One complete plain reply: END alone, or one VALUE whose delete committed before it left. */
function plainReply(ledger: Ledger, rig: Rig, link: Link, last: Map<number, number>, reply: string): void {
  if (reply === "END\r\n") return;
  const m = PLAIN_VALUE.exec(reply);
  if (m === null) throw new Error(`plain consumer: unexpected reply ${JSON.stringify(reply)}`);
  const id = observe(ledger, rig, last, Number(m[1]), Number(m[2]));
  // Held open by a server that is still alive, confirmed, or taken by a plain get: twice.
  if (ledger.confirmed.has(id) || ledger.plainDelivered.has(id) || ledger.heldOpen.get(id) === link.life) ledger.duplicates++;
  else if (ledger.delivered.has(id)) ledger.redelivered++;
  ledger.delivered.add(id);
  ledger.plainDelivered.add(id);
}

/**
 * How many lost messages the cut plain gets cannot account for. The rule: a plain get in flight
 * when life i was killed may have taken one message that was in that server, i.e. one whose
 * set went to life e ≤ i; so each lost message needs its own such get, at some kill i ≥ its
 * life. The kills a message may use form a suffix, so such an assignment exists for all but
 * max over e of (lost with life ≥ e) − (gets in flight at kills ≥ e) messages (Hall's theorem
 * for nested choices), and that many are unexplained (0 if negative).
 */
export function unexplainedLosses(lostLives: number[], inFlight: number[]): number {
  const lostIn: number[] = []; // life → lost messages whose set went to it
  for (const life of lostLives) lostIn[life] = (lostIn[life] ?? 0) + 1;
  let worst = 0;
  let lost = 0;
  let gets = 0;
  for (let e = Math.max(lostIn.length, inFlight.length) - 1; e >= 0; e--) {
    lost += lostIn[e] ?? 0;
    gets += inFlight[e] ?? 0;
    worst = Math.max(worst, lost - gets);
  }
  return worst;
}

/** Kills the server `kills` times at random moments, restarting it on the same directory. */
async function killLoop(rig: Rig, ledger: Ledger, kills: number, args: string[], home: string, log: (l: string) => void) {
  for (let i = 0; i < kills; i++) {
    await Bun.sleep(150 + Math.floor(Math.random() * 500));
    let restarted!: () => void;
    rig.up = new Promise((ok) => (restarted = ok));
    rig.killed = i + 1;
    await rig.current.server.kill("SIGKILL");
    rig.current = { server: await startServer(args, home), life: i + 1 };
    restarted();
    log(`kill ${i + 1}/${kills}: ${ledger.acknowledged.size} acknowledged, ${ledger.delivered.size} delivered`);
  }
}

export async function torture(options: TortureOptions): Promise<TortureReport> {
  const { kills, sync, producers = 8, consumers = 8, plainConsumers = 4, log = () => {} } = options;
  const home = join(tempDir("mcq-torture-"), "data");
  const args = ["--sync", sync];
  const rig: Rig = {
    current: { server: await startServer(args, home), life: 0 },
    up: Promise.resolve(),
    killed: 0,
    producing: true,
    consuming: true,
    producers,
  };
  const ledger: Ledger = {
    acknowledged: new Map(),
    delivered: new Set(),
    confirmed: new Set(),
    heldOpen: new Map(),
    plainDelivered: new Set(),
    inFlight: [],
    duplicates: 0,
    redelivered: 0,
    outOfOrder: 0,
    unknown: 0,
  };
  const stopAll = (e: unknown) => {
    rig.producing = rig.consuming = false;
    throw e;
  };
  const making = Promise.all(Array.from({ length: producers }, (_, p) => producer(rig, ledger, p))).catch(stopAll);
  const taking = Promise.all([
    ...Array.from({ length: consumers }, (_, k) => reliableConsumer(rig, ledger, k)),
    ...Array.from({ length: plainConsumers }, () => plainConsumer(rig, ledger)),
  ]).catch(stopAll);

  await killLoop(rig, ledger, kills, args, home, log);
  await Bun.sleep(300);
  rig.producing = false;
  await making;
  const end = await drain(rig, log);
  rig.consuming = false;
  await taking;
  await rig.current.server.kill("SIGTERM");
  const lostLives = [...ledger.acknowledged].filter(([id]) => !ledger.delivered.has(id)).map(([, life]) => life);
  const takenUnseen = end.total - ledger.delivered.size;
  return {
    sync,
    kills,
    acknowledged: ledger.acknowledged.size,
    delivered: ledger.delivered.size,
    plainDelivered: ledger.plainDelivered.size,
    lost: lostLives.length,
    inFlightAtKill: ledger.inFlight.reduce((a, b) => a + (b ?? 0), 0),
    takenUnseen,
    // A lost message must also be one the server consumed unseen, not one it never stored.
    unexplainedLost: Math.max(unexplainedLosses(lostLives, ledger.inFlight), lostLives.length - Math.max(takenUnseen, 0)),
    duplicates: ledger.duplicates,
    redelivered: ledger.redelivered,
    outOfOrder: ledger.outOfOrder,
    unknown: ledger.unknown,
    queuedAtEnd: end.items,
  };
}

/**
 * After the last restart, with every producer done: the consumers run until the queue is empty,
 * open messages included, or PATIENCE_MS pass. Returns the messages still queued. (A close
 * whose reply died with a server is not retried: the server has it, the client does not know.
 * Such a message was delivered, so it is not lost.)
 */
async function drain(rig: Rig, log: (l: string) => void): Promise<{ items: number; total: number }> {
  const { c } = await connect(rig);
  const started = Date.now();
  const stat = (text: string, name: string) => Number(new RegExp(`STAT ${name} (\\d+)\r\n`).exec(text)?.[1] ?? 0);
  let stats = "";
  while (Date.now() - started < PATIENCE_MS) {
    stats = await c.call(`stats queue ${QUEUE}\r\n`);
    if (stat(stats, "items") === 0) break;
    await Bun.sleep(50);
  }
  log(`drained in ${Date.now() - started} ms: ${stats.replace(/\r\n/g, " ")}`);
  c.close();
  return { items: stat(stats, "items"), total: stat(stats, "total") };
}

if (import.meta.main) {
  cleanUpOnExit(); // its data directories go at the end, and when interrupted
  const argv = process.argv.slice(2);
  const value = (flag: string) => argv[argv.indexOf(flag) + 1];
  const kills = argv.includes("--kills") ? Number(value("--kills")) : 10;
  const modes = argv.includes("--sync") ? [value("--sync") as "full" | "normal"] : (["full", "normal"] as const);
  let bad = false;
  for (const sync of modes) {
    const report = await torture({ kills, sync, log: (l) => console.log(`[${sync}] ${l}`) });
    console.log(JSON.stringify(report));
    bad ||= report.unexplainedLost + report.duplicates + report.outOfOrder + report.unknown + report.queuedAtEnd > 0;
  }
  process.exit(bad ? 1 : 0);
}
