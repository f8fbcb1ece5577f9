/**
 * A Postgres node's data directory (-H) holds no queue state, only who the node was: the file
 * `postgres-node` names its node id and process. A node restarted on the same directory (after
 * kill -9, say) knows its previous self is dead and returns that node's open messages at once,
 * instead of after --node-timeout; and a second server on a directory in use is refused, as
 * with SQLite.
 */
import { readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { StoreLockedError } from "./sqlite-file";

const FILE = "postgres-node";

export interface HomeClaim {
  /** The node id this directory's previous server had, if it is gone. */
  previous: number | null;
  /** Records this server's node id. */
  write(node: number): void;
  /** A clean stop: the directory names no node. */
  release(): void;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as { code?: string }).code === "EPERM";
  }
}

export function claimHome(home: string): HomeClaim {
  const file = join(home, FILE);
  let previous: number | null = null;
  try {
    const [node, pid] = readFileSync(file, "utf8").trim().split(" ").map(Number);
    if (pid !== undefined && pid !== process.pid && alive(pid)) throw new StoreLockedError(`the data directory is in use by process ${pid}`);
    if (Number.isInteger(node)) previous = node!;
  } catch (e) {
    if (e instanceof StoreLockedError) throw e;
    // No file (a fresh directory), or an unreadable one: no previous node to take over.
  }
  return {
    previous,
    write(node) {
      writeFileSync(`${file}.tmp`, `${node} ${process.pid}\n`);
      renameSync(`${file}.tmp`, file);
    },
    release: () => rmSync(file, { force: true }),
  };
}

/** The -H directory is this node's now; its last node, gone (killed), gives back what it held open. */
export async function reclaim(claim: HomeClaim, node: number, reap: (previous: number) => Promise<number>, log: (level: "info", line: string) => void) {
  if (claim.previous != null) {
    const back = await reap(claim.previous);
    if (back > 0) log("info", `Postgres: ${back} open messages of this directory's previous node returned`);
  }
  claim.write(node);
}

/**
 * Whether this node may reap another: only once it has itself been connected for a whole lease
 * of that node (its --node-timeout, postgres-sql.ts DEAD). A node silent that long while this one
 * was away (a Postgres outage or restart, this node paused) may be alive and reconnecting too:
 * after an outage longer than the timeout every heartbeat is stale, and the first node back would
 * reap all the others, handing out again every message they hold open. Their heartbeats come
 * every third of their lease, so within a lease after this node's (re)connect a live node has
 * beaten; one still silent then is dead.
 */
export function createWitness(leaseS: number, clock = () => performance.now()) {
  let since = clock();
  let last = since;
  return {
    /** A new connection (after a failure): the others are given a lease from now. */
    connected: () => void (since = clock()),
    /**
     * A heartbeat succeeded; one after a gap over `gapS` (the shortest lease of the nodes, which
     * sets how often this one beats: this node paused, or Postgres stalled) counts as a reconnect.
     */
    beat(gapS = leaseS) {
      const now = clock();
      if (now - last > gapS * 1000) since = now;
      last = now;
    },
    /** How long (s) this node has been connected without a gap: it reaps nodes whose lease is no longer. */
    seconds: () => (clock() - since) / 1000,
  };
}

export type Witness = ReturnType<typeof createWitness>;
