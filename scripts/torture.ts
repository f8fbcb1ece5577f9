/**
 * Crash torture: producers number their messages and note which were acknowledged with
 * STORED, consumers take them with reliable reads (/open, then /close) at the same time, and
 * the server is killed with kill -9 at random moments and restarted on the same data
 * directory. At the end every acknowledged message must have been delivered, none delivered
 * again once its close was acknowledged, none held by two consumers at once, and each
 * consumer must see each producer's messages in order between restarts.
 *
 *   bun run torture                     10 kills, --sync full and --sync normal
 *   bun run torture --kills 3 --sync normal
 * test/e2e/torture.test.ts runs a short form (3 kills) in `npm test`.
 */
import { join } from "node:path";
import { Client, startServer, tempDir, type Running } from "../test/e2e/harness";

export interface TortureOptions {
  kills: number;
  sync: "full" | "normal";
  producers?: number;
  consumers?: number;
  log?: (line: string) => void;
}

export interface TortureReport {
  sync: string;
  kills: number;
  acknowledged: number;
  delivered: number;
  lost: number;
  /** Delivered again after its close was acknowledged, or to two consumers at once. */
  duplicates: number;
  /** Delivered again because the server died before its close committed: allowed. */
  redelivered: number;
  outOfOrder: number;
  unknown: number;
}

const QUEUE = "torture";

export async function torture(options: TortureOptions): Promise<TortureReport> {
  const { kills, sync, producers = 8, consumers = 8, log = () => {} } = options;
  const home = join(tempDir("mcq-torture-"), "data");
  const args = ["--sync", sync];
  let server: Running = await startServer(args, home);
  let up: Promise<void> = Promise.resolve();
  let producing = true;
  let consuming = true;

  const acknowledged = new Set<string>();
  const delivered = new Set<string>();
  const confirmed = new Set<string>();
  const heldOpen = new Set<string>();
  let duplicates = 0;
  let redelivered = 0;
  let outOfOrder = 0;
  let unknown = 0;

  /** A connection to the current server; waits through a restart. */
  async function connect(): Promise<Client> {
    for (;;) {
      await up;
      try {
        return await server.connect();
      } catch {
        await Bun.sleep(20);
      }
    }
  }

  async function producer(p: number): Promise<void> {
    let seq = 0;
    let c = await connect();
    while (producing) {
      const body = `${p}:${seq}`.padEnd(100, ".");
      try {
        c.write(`set ${QUEUE} 0 0 ${body.length}\r\n${body}\r\n`);
        const reply = (await c.until((b) => b.includes("\r\n"), 20_000)).toString();
        if (reply === "STORED\r\n") {
          acknowledged.add(`${p}:${seq}`);
          seq++;
          continue;
        }
        if (!c.closed) throw new Error(`producer ${p}: unexpected reply ${JSON.stringify(reply)}`);
      } catch (e) {
        if (!c.closed) throw e;
      }
      // The server died with this set in flight: it may or may not be stored. Send the next
      // number, so an unacknowledged message is never confused with an acknowledged one.
      seq++;
      c = await connect();
    }
    c.close();
  }

  async function consumer(k: number): Promise<void> {
    let c = await connect();
    let last = new Map<number, number>(); // producer → last seq seen on this connection
    let open: string | null = null;
    // Each request confirms the message this connection has open (if any) and opens the next.
    while (consuming || open !== null) {
      try {
        c.write(consuming ? `get ${QUEUE}/close/open/t=100\r\n` : `get ${QUEUE}/close\r\n`);
        const reply = (await c.until((b) => b.toString("latin1").endsWith("END\r\n"), 20_000)).toString("latin1");
        if (!reply.endsWith("END\r\n")) throw new Error("closed");
        if (open !== null) {
          heldOpen.delete(open);
          confirmed.add(open);
          open = null;
        }
        const m = /^VALUE \S+ 0 100\r\n(\d+):(\d+)\.*\r\n/.exec(reply);
        if (m === null) {
          if (reply !== "END\r\n") throw new Error(`consumer ${k}: unexpected reply ${JSON.stringify(reply)}`);
          continue;
        }
        const id = `${m[1]}:${m[2]}`;
        const [p, seq] = [Number(m[1]), Number(m[2])];
        if (confirmed.has(id) || heldOpen.has(id)) duplicates++;
        else if (delivered.has(id)) redelivered++;
        if (p >= producers) unknown++;
        if (seq <= (last.get(p) ?? -1)) outOfOrder++;
        last.set(p, seq);
        delivered.add(id);
        heldOpen.add(id);
        open = id;
      } catch (e) {
        if (!c.closed) throw e;
        // The server died: an unconfirmed message comes back and may be delivered again.
        if (open !== null) heldOpen.delete(open);
        open = null;
        last = new Map();
        c = await connect();
      }
    }
    c.close();
  }

  const workers = [
    ...Array.from({ length: producers }, (_, p) => producer(p)),
    ...Array.from({ length: consumers }, (_, k) => consumer(k)),
  ];
  const failed = Promise.all(workers).catch((e) => {
    producing = consuming = false;
    throw e;
  });

  for (let i = 0; i < kills; i++) {
    await Bun.sleep(150 + Math.floor(Math.random() * 500));
    let restarted!: () => void;
    up = new Promise((ok) => (restarted = ok));
    await server.kill("SIGKILL");
    server = await startServer(args, home);
    restarted();
    log(`kill ${i + 1}/${kills}: ${acknowledged.size} acknowledged, ${delivered.size} delivered`);
  }
  await Bun.sleep(300);
  producing = false;
  // Drain: consumers run until every acknowledged message was delivered and the queue is empty,
  // or 20 s pass. (A confirmation whose reply died with the server is not retried: the server
  // has it, the client does not know. Such a message was delivered, so it is not lost.)
  const control = await connect();
  const deadline = Date.now() + 20_000;
  for (;;) {
    const everyone = [...acknowledged].every((id) => delivered.has(id));
    if (everyone && /STAT items 0\r\n/.test(await control.call(`stats queue ${QUEUE}\r\n`))) break;
    if (Date.now() > deadline) break;
    await Bun.sleep(50);
  }
  log(`drained in ${20_000 - (deadline - Date.now())} ms`);
  consuming = false;
  await failed;
  const rest = await control.call(`stats queue ${QUEUE}\r\n`);
  control.close();
  await server.kill("SIGTERM");
  const lost = [...acknowledged].filter((id) => !delivered.has(id)).length;
  log(`end: ${rest.replace(/\r\n/g, " ")}`);
  return {
    sync,
    kills,
    acknowledged: acknowledged.size,
    delivered: delivered.size,
    lost,
    duplicates,
    redelivered,
    outOfOrder,
    unknown,
  };
}

if (import.meta.main) {
  const argv = process.argv.slice(2);
  const value = (flag: string) => argv[argv.indexOf(flag) + 1];
  const kills = argv.includes("--kills") ? Number(value("--kills")) : 10;
  const modes = argv.includes("--sync") ? [value("--sync") as "full" | "normal"] : (["full", "normal"] as const);
  let bad = false;
  for (const sync of modes) {
    const report = await torture({ kills, sync, log: (l) => console.log(`[${sync}] ${l}`) });
    console.log(JSON.stringify(report));
    bad ||= report.lost + report.duplicates + report.outOfOrder + report.unknown > 0;
  }
  process.exit(bad ? 1 : 0);
}
