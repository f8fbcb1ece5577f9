/**
 * Crash torture of several mcq nodes on one Postgres (the single-node form is scripts/torture.ts):
 * producers number their messages and note which were acknowledged with STORED; reliable
 * consumers take them with /close/open; each client connects to a node picked at random, and
 * random nodes are killed with kill -9 and restarted on their own data directory (which returns
 * their previous self's open messages at once, postgres-home.ts).
 *
 * Must hold: no acknowledged message is lost; none is delivered again once its close was
 * acknowledged, nor to two consumers while its holder lives; the counters, summed over nodes, are
 * exact: after the drain no message is queued or open, and `total` and `fetched` are the number
 * of messages delivered (every message stored is delivered, acknowledged or not). Order is
 * reported, not required: a message held by a killed node comes back behind later ones that
 * consumers on other nodes took meanwhile.
 *
 *   bun scripts/torture-nodes.ts --store postgres://… [--kills 10] [--nodes 3]
 * test/e2e/postgres-torture.test.ts runs a short form in `npm test`.
 */
import { join } from "node:path";
import { Client, cleanUpOnExit, startServer, tempDir, type Running } from "../test/e2e/harness";

export interface NodesTortureOptions {
  /** A Postgres URL naming the schema the nodes share. */
  store: string;
  kills: number;
  nodes?: number;
  producers?: number;
  consumers?: number;
  log?: (line: string) => void;
}

export interface NodesTortureReport {
  nodes: number;
  kills: number;
  acknowledged: number;
  delivered: number;
  lost: number;
  duplicates: number;
  /** Delivered again because its holder died before its close committed: allowed. */
  redelivered: number;
  outOfOrder: number;
  unknown: number;
  /** Counters after the drain, summed over the nodes. */
  queuedAtEnd: number;
  openAtEnd: number;
  total: number;
  fetched: number;
  seconds: number;
}

const QUEUE = "torture";
const BODY = 100;
const PATIENCE_MS = 20_000;

interface Node {
  server: Running;
  life: number;
  home: string;
  /** Resolves when the node is up (pending during its restart). */
  up: Promise<void>;
}

interface Rig {
  nodes: Node[];
  /** Lives (one per server start, over all nodes) that were killed; marked before the kill. */
  killed: Set<number>;
  lives: number;
  producing: boolean;
  consuming: boolean;
  producers: number;
}

interface Ledger {
  acknowledged: Set<string>;
  delivered: Set<string>;
  confirmed: Set<string>;
  /** Open message → the life of the node that holds it open. */
  heldOpen: Map<string, number>;
  duplicates: number;
  redelivered: number;
  outOfOrder: number;
  unknown: number;
}

interface Link {
  c: Client;
  life: number;
}

/** A connection to a node picked at random; waits through its restart. */
async function connect(rig: Rig): Promise<Link> {
  const deadline = Date.now() + PATIENCE_MS;
  for (;;) {
    const node = rig.nodes[Math.floor(Math.random() * rig.nodes.length)]!;
    await node.up;
    const { server, life } = node;
    try {
      return { c: await server.connect(), life };
    } catch (e) {
      if (Date.now() > deadline) throw e;
      await Bun.sleep(20);
    }
  }
}

/** A failed exchange is allowed only if its node was killed; anything else is rethrown. */
function expectKilled(rig: Rig, link: Link, e: unknown): void {
  if (!link.c.closed) throw e;
  if (!rig.killed.has(link.life)) throw new Error(`a node (life ${link.life}) closed a connection without being killed`);
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
      ledger.acknowledged.add(`${p}:${seq++}`);
      continue;
    } catch (e) {
      expectKilled(rig, link, e);
    }
    seq++; // maybe stored: the next number, so it is never confused with an acknowledged one
    link = await connect(rig);
  }
  link.c.close();
}

async function reliableConsumer(rig: Rig, ledger: Ledger, k: number): Promise<void> {
  let link = await connect(rig);
  const last = new Map<number, number>(); // producer → last seq this consumer saw
  let open: string | null = null;
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
      const p = Number(m[1]);
      const seq = Number(m[2]);
      if (p >= rig.producers) ledger.unknown++;
      if (seq <= (last.get(p) ?? -1)) ledger.outOfOrder++;
      last.set(p, seq);
      const id = `${p}:${seq}`;
      const holder = ledger.heldOpen.get(id);
      // Confirmed already, or held open by a node that still lives: delivered twice.
      if (ledger.confirmed.has(id) || (holder !== undefined && !rig.killed.has(holder))) ledger.duplicates++;
      else if (ledger.delivered.has(id)) ledger.redelivered++;
      ledger.delivered.add(id);
      ledger.heldOpen.set(id, link.life);
      open = id;
    } catch (e) {
      expectKilled(rig, link, e);
      if (open !== null && ledger.heldOpen.get(open) === link.life) ledger.heldOpen.delete(open);
      open = null; // it comes back: its node's restart returns it
      link = await connect(rig);
    }
  }
  link.c.close();
}

/** Kills a random node `kills` times at random moments, restarting it on its own directory. */
async function killLoop(rig: Rig, ledger: Ledger, kills: number, args: string[], log: (l: string) => void): Promise<void> {
  for (let i = 0; i < kills; i++) {
    await Bun.sleep(150 + Math.floor(Math.random() * 500));
    const node = rig.nodes[Math.floor(Math.random() * rig.nodes.length)]!;
    let restarted!: () => void;
    node.up = new Promise((ok) => (restarted = ok));
    rig.killed.add(node.life);
    await node.server.kill("SIGKILL");
    node.server = await startServer(args, node.home);
    node.life = rig.lives++;
    restarted();
    log(`kill ${i + 1}/${kills} (node ${rig.nodes.indexOf(node)}): ${ledger.acknowledged.size} acknowledged, ${ledger.delivered.size} delivered`);
  }
}

const stat = (text: string, name: string) => Number(new RegExp(`STAT ${name} (\\d+)\r\n`).exec(text)?.[1] ?? -1);

async function queueStats(rig: Rig): Promise<string> {
  const { c } = await connect(rig);
  const text = await c.call(`stats queue ${QUEUE}\r\n`);
  c.close();
  return text;
}

export async function tortureNodes(options: NodesTortureOptions): Promise<NodesTortureReport> {
  const { store, kills, nodes: count = 3, producers = 6, consumers = 6, log = () => {} } = options;
  const started = performance.now();
  const args = ["--store", store];
  const rig: Rig = { nodes: [], killed: new Set(), lives: 0, producing: true, consuming: true, producers };
  for (let i = 0; i < count; i++) {
    const home = join(tempDir("mcq-torture-nodes-"), "data");
    rig.nodes.push({ server: await startServer(args, home), life: rig.lives++, home, up: Promise.resolve() });
  }
  const ledger: Ledger = {
    acknowledged: new Set(), delivered: new Set(), confirmed: new Set(), heldOpen: new Map(),
    duplicates: 0, redelivered: 0, outOfOrder: 0, unknown: 0,
  };
  const stopAll = (e: unknown) => {
    rig.producing = rig.consuming = false;
    throw e;
  };
  const making = Promise.all(Array.from({ length: producers }, (_, p) => producer(rig, ledger, p))).catch(stopAll);
  const taking = Promise.all(Array.from({ length: consumers }, (_, k) => reliableConsumer(rig, ledger, k))).catch(stopAll);
  try {
    await killLoop(rig, ledger, kills, args, log);
    await Bun.sleep(300);
    rig.producing = false;
    await making;
    // The consumers drain the queue; then each closes what it holds.
    const drainStart = Date.now();
    while (Date.now() - drainStart < PATIENCE_MS && stat(await queueStats(rig), "items") !== 0) await Bun.sleep(50);
    rig.consuming = false;
    await taking;
    const end = await queueStats(rig);
    log(`end: ${end.replace(/\r\n/g, " ")}`);
    const lost = [...ledger.acknowledged].filter((id) => !ledger.delivered.has(id)).length;
    return {
      nodes: count, kills, acknowledged: ledger.acknowledged.size, delivered: ledger.delivered.size, lost,
      duplicates: ledger.duplicates, redelivered: ledger.redelivered, outOfOrder: ledger.outOfOrder, unknown: ledger.unknown,
      queuedAtEnd: stat(end, "items"), openAtEnd: stat(end, "open"), total: stat(end, "total"), fetched: stat(end, "fetched"),
      seconds: Math.round((performance.now() - started) / 100) / 10,
    };
  } finally {
    rig.producing = rig.consuming = false;
    await Promise.all(rig.nodes.map((n) => n.server.kill("SIGTERM").catch(() => {})));
  }
}

if (import.meta.main) {
  cleanUpOnExit(); // its data directories go at the end, and when interrupted
  const argv = process.argv.slice(2);
  const value = (flag: string) => argv[argv.indexOf(flag) + 1];
  const store = argv.includes("--store") ? value("--store")! : process.env.MCQ_TEST_PG;
  if (store === undefined) {
    console.error("usage: bun scripts/torture-nodes.ts --store postgres://… [--kills N] [--nodes N]");
    process.exit(2);
  }
  const report = await tortureNodes({
    store,
    kills: argv.includes("--kills") ? Number(value("--kills")) : 10,
    nodes: argv.includes("--nodes") ? Number(value("--nodes")) : 3,
    log: (l) => console.log(l),
  });
  console.log(JSON.stringify(report));
  const bad = report.lost + report.duplicates + report.unknown + report.queuedAtEnd + report.openAtEnd > 0 ||
    report.total !== report.delivered || report.fetched !== report.total;
  process.exit(bad ? 1 : 0);
}
