/**
 * Batches whose outcome stayed unknown (docs/design.md "A COMMIT with no answer"): their COMMIT
 * was sent, its answer did not come, and Postgres could not be asked within the timeout (down,
 * partitioned) or the backend could not be ended. Their clients got SERVER_ERROR, and the store
 * went on as if they had failed; but one may have landed, and then its plain gets consumed
 * messages whose replies never left. So such a batch is kept here (its xid, the server it ran on,
 * the rows its takes returned and the ids they opened) and asked about again until Postgres
 * answers: committed, what its takes took is given back (postgres-outcome-sql.ts giveBack:
 * re-inserted by id, leases ended, their counts undone, and the batch recorded as settled, in one
 * statement); rolled back, nothing left, nothing to do. The list is also written to the data
 * directory (postgres-unknown-file.ts), so a node killed before it could ask again asks when it
 * starts on that directory.
 */
import type { SQL } from "bun";
import type { Statements } from "./postgres-sql";
import type { Tx } from "./postgres-send";
import type { StoreError } from "./store";
import { unknownFile, type Here, type Unresolved } from "./postgres-unknown-file";

export type { Unresolved } from "./postgres-unknown-file";

export interface UnknownDeps {
  st: Statements;
  node: number;
  timeoutMs: number;
  /** A connection of its own to the host in use. */
  side(): SQL;
  /** The identity of the server `on` writes to; null if it never can be read; throws if not now (postgres-hosts.ts identityReader). */
  identity(on: SQL): Promise<string | null>;
  /** This node holds message `id` open now (a later open of it must not be ended). */
  holds(id: number): boolean;
  /** Messages came back to these queues: wake their waiters, read the counters again. */
  gaveBack(queues: string[]): Promise<void>;
  reason(e: unknown): StoreError;
  log(level: "info" | "warn", message: string): void;
  /** The data directory (the list's file is kept there), or null. */
  home: string | null;
  /** This store (postgres-unknown-file.ts belongs). */
  here: Here;
  /** The file's bound in bytes (postgres-unknown-file.ts). */
  fileCap?: number;
}

export function createUnknown(d: UnknownDeps) {
  const file = unknownFile(d.home, d.here, d.log, d.fileCap);
  const list: Unresolved[] = file.load();
  let asking: Promise<void> | null = null;
  let quiet = false;

  /** Writes the list; returns the entries left out of the file. */
  const save = () => file.save(list);

  /** Keeps a batch whose outcome stays unknown, if its takes took anything. */
  function keep(tx: Tx): void {
    if (tx.xact === null) return; // no take answered (answers come in order): nothing known to give back
    if (tx.taken.length === 0 && tx.leased.length === 0 && tx.unanswered === 0) return; // sets stand either way
    const { xid, pid } = tx.xact;
    const store = { system: d.here.system, database: d.here.database, schema: d.here.schema };
    const u: Unresolved = { xid, pid, server: tx.server, node: d.node, store, taken: tx.taken, leased: tx.leased, unanswered: tx.unanswered };
    list.push(u);
    try {
      if (save().includes(u)) d.log("warn", `Postgres: ${file.path} would pass ${file.fileCap} bytes: transaction ${xid} is asked about again only while this node runs`);
    } catch (e) {
      d.log("warn", `Postgres: cannot write ${file.path}: ${(e as Error).message}; transaction ${xid} is asked about again only while this node runs`);
    }
    d.log("warn", `Postgres: transaction ${xid} (${tx.taken.length} messages taken, ${tx.leased.length} opened) is asked about again once Postgres answers`);
  }

  /** Asks about every kept batch, once at a time, bounded by the timeout; what is not settled stays. */
  function ask(): Promise<void> {
    if (list.length === 0 || asking !== null) return asking ?? Promise.resolve();
    const side = d.side();
    // A run cut off by the timeout may still be waiting (a give-back's refresh) when the next run
    // starts: once stopped it touches the list no more, or both would settle the same entry.
    const run = { stopped: false };
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<never>((_, fail) => {
      timer = setTimeout(() => {
        run.stopped = true;
        fail(new Error(`no answer within ${d.timeoutMs} ms`));
      }, d.timeoutMs);
    });
    asking = Promise.race([askAll(side, run), late])
      .then(
        () => void (quiet = false),
        (e) => {
          if (!quiet) d.log("warn", `Postgres: asking about ${list.length} batches of unknown outcome: ${d.reason(e).message}; asking again later`);
          quiet = true;
        },
      )
      .finally(() => {
        clearTimeout(timer);
        void side.close({ timeout: 0 }).catch(() => {});
        asking = null;
      });
    return asking;
  }

  async function askAll(side: SQL, run: { stopped: boolean }): Promise<void> {
    const here = await d.identity(side); // throws if it cannot be read now: asked again later, not "by rows"
    for (const u of [...list]) {
      if (run.stopped) return;
      const landed = await outcome(side, here, u);
      if (landed === null || run.stopped) continue; // still in progress (asked again later), or cut off
      if (landed === "committed" || landed === "by rows") await giveBack(side, u, landed);
      else d.log("info", `Postgres: transaction ${u.xid} had been rolled back: its messages never left their queues`);
      if (run.stopped) return; // a later run settles it again ("given back already": recorded as settled)
      const i = list.indexOf(u);
      if (i < 0) continue; // settled meanwhile by another run
      list.splice(i, 1);
      save();
    }
  }

  /**
   * Whether the batch committed. Its xid is only asked about on the server and timeline it ran
   * on: after a failover, the new primary may have given that number to another transaction, or
   * not reached it yet. Elsewhere, or if the server cannot say (no record left of so old an xid),
   * the rows decide: a give-back re-inserts only the taken rows no longer in the table, and ends
   * only leases this node still has and no session holds.
   */
  async function outcome(side: SQL, here: string | null, u: Unresolved): Promise<"committed" | "aborted" | "by rows" | null> {
    if (here === null || u.server !== here) return "by rows";
    const status = await d.st.resolve(side, u.xid, u.pid, d.timeoutMs, here);
    if (status === "in progress") return null;
    return status === "committed" ? "committed" : status === "aborted" ? "aborted" : "by rows";
  }

  async function giveBack(side: SQL, u: Unresolved, why: "committed" | "by rows"): Promise<void> {
    const key = `${u.server ?? `node ${u.node}`}/${u.xid}`;
    const leased = u.leased.filter((id) => !d.holds(id));
    const r = await d.st.giveBack(side, key, d.node, u.node, u.taken, leased);
    if (r.queues !== null) await d.gaveBack(r.queues); // before saying so: the counters read after say it too
    const how = why === "committed" ? "had committed" : `cannot be asked about on this server (${u.server === null ? "unknown server" : "another server or timeline"})`;
    if (r.settled === 0) d.log("info", `Postgres: transaction ${u.xid} ${how}: given back already`);
    else d.log("warn", `Postgres: transaction ${u.xid} ${how}: gave back ${r.back} messages taken and ${r.released} opened`);
    if (u.unanswered > 0 && why === "committed") {
      d.log("warn", `Postgres: transaction ${u.xid} had committed, and ${u.unanswered} of its take statements never answered: what they took is gone`);
    }
  }

  return {
    keep,
    ask,
    /** Batches kept, not yet settled. */
    pending: () => list.length,
  };
}
