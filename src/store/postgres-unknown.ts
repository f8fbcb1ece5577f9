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
import { within } from "../within";

export type { Unresolved } from "./postgres-unknown-file";

export interface UnknownDeps {
  st: Statements;
  node: number;
  timeoutMs: number;
  /** A connection of its own to the host in use. */
  side(): SQL;
  /** The identity of the server `on` writes to; null if it never can be read; throws if not now (postgres-hosts.ts identityReader). */
  identity(on: SQL): Promise<string | null>;
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
  /** The clock (tests set it). */
  now?: () => number;
}

/** An entry that stays unresolved is logged when first asked in vain, then at these ages (ms), then every hour. */
const TELL_AT = [60_000, 600_000, 3_600_000];
const tellAt = (n: number) => (n < TELL_AT.length ? TELL_AT[n]! : TELL_AT.at(-1)! + (n - TELL_AT.length + 1) * 3_600_000);

/** Rejects after `ms` unless `p` settles first. */
const bounded = <T>(p: Promise<T>, ms: number) => within(p, ms, () => new Error(`no answer within ${ms} ms`));

export function createUnknown(d: UnknownDeps) {
  const now = d.now ?? Date.now;
  const file = unknownFile(d.home, d.here, d.log, d.fileCap);
  const list: Unresolved[] = file.load();
  /** Per entry: since when it is kept, how often its staying unresolved was told, and why the last ask failed. */
  const state = new WeakMap<Unresolved, { since: number; told: number; why: string | null }>();
  for (const u of list) state.set(u, { since: now(), told: 0, why: null });
  /** Entries kept in memory only (past the file's bound, or the file could not be written). */
  let unsaved = new Set<Unresolved>();
  let asking: Promise<void> | null = null;
  let quiet = false;

  /** Writes the list; says, and returns, whether `u` is in the file. */
  function save(u?: Unresolved): void {
    try {
      unsaved = new Set(file.save(list));
      if (u !== undefined && unsaved.has(u)) d.log("warn", `Postgres: ${file.path} would pass ${file.fileCap} bytes: transaction ${u.xid} is asked about again only while this node runs`);
    } catch (e) {
      unsaved = new Set(list);
      d.log("warn", `Postgres: cannot write ${file.path}: ${(e as Error).message}; ${u === undefined ? "its batches are" : `transaction ${u.xid} is`} asked about again only while this node runs`);
    }
  }

  /** Keeps a batch whose outcome stays unknown, if its takes took anything. */
  function keep(tx: Tx): void {
    if (tx.xact === null) return; // no take answered (answers come in order): nothing known to give back
    if (tx.taken.length === 0 && tx.leased.length === 0 && tx.unanswered === 0) return; // sets stand either way
    const { xid, pid } = tx.xact;
    const store = { system: d.here.system, database: d.here.database, schema: d.here.schema, id: d.here.id };
    const u: Unresolved = { xid, pid, server: tx.server, node: d.node, store, taken: tx.taken, leased: tx.leased, unanswered: tx.unanswered };
    list.push(u);
    state.set(u, { since: now(), told: 0, why: null });
    save(u);
    d.log("warn", `Postgres: transaction ${xid} (${tx.taken.length} messages taken, ${tx.leased.length} opened) is asked about again once Postgres answers`);
  }

  /**
   * Asks about every kept batch, each bounded by the timeout on its own: one whose answer does not
   * come (a statement held up by a lock, a backend that cannot be ended) delays the others by one
   * timeout, never stops them from being asked. What is not settled stays.
   */
  function ask(): Promise<void> {
    if (list.length === 0 || asking !== null) return asking ?? Promise.resolve();
    asking = askAll()
      .then(
        () => void (quiet = false),
        (e) => {
          if (!quiet) d.log("warn", `Postgres: asking about ${list.length} batches of unknown outcome: ${d.reason(e).message}; asking again later`);
          quiet = true;
          for (const u of list) state.get(u)!.why = d.reason(e).message;
        },
      )
      .finally(() => {
        asking = null;
        tell();
      });
    return asking;
  }

  /** A connection of its own and the identity of its server, within the timeout; throws if either fails (asked again later). */
  async function connect(): Promise<{ side: SQL; here: string | null }> {
    const side = d.side();
    try {
      return { side, here: await bounded(d.identity(side), d.timeoutMs) };
    } catch (e) {
      void side.close({ timeout: 0 }).catch(() => {});
      throw e;
    }
  }

  async function askAll(): Promise<void> {
    let c: { side: SQL; here: string | null } | null = await connect(); // Postgres not to be reached: the whole ask fails
    try {
      for (const u of [...list]) {
        if (!list.includes(u)) continue; // settled meanwhile
        c ??= await connect();
        // Once cut off, it touches the list no more: a later ask settles it ("given back already": recorded as settled).
        const run = { stopped: false };
        try {
          await bounded(settle(c.side, c.here, u, run), d.timeoutMs);
        } catch (e) {
          run.stopped = true;
          unresolved(u, d.reason(e).message);
          // Its statement may still hold the connection: the next entry is asked on a new one.
          void c.side.close({ timeout: 0 }).catch(() => {});
          c = null;
        }
      }
    } finally {
      void c?.side.close({ timeout: 0 }).catch(() => {});
    }
  }

  /** Asks about one batch; settled, it leaves the list (and the file). */
  async function settle(side: SQL, here: string | null, u: Unresolved, run: { stopped: boolean }): Promise<void> {
    const landed = await outcome(side, here, u);
    if (landed === null) return unresolved(u, "its backend could not be ended: still in progress");
    if (run.stopped) return;
    if (landed === "committed" || landed === "by rows") await giveBack(side, u, landed);
    else d.log("info", `Postgres: transaction ${u.xid} had been rolled back: its messages never left their queues`);
    if (run.stopped) return;
    const i = list.indexOf(u);
    if (i < 0) return; // settled meanwhile by another ask
    list.splice(i, 1);
    save();
  }

  /** An ask about `u` got no answer: said the first time (then by tell()). */
  function unresolved(u: Unresolved, why: string): void {
    const s = state.get(u)!;
    if (s.why === null) d.log("warn", `Postgres: transaction ${u.xid} (${u.taken.length} messages taken, ${u.leased.length} opened) stays of unknown outcome (${why}); asking again about once a second`);
    s.why = why;
  }

  /** Entries still unresolved are said again at 1 min, 10 min, 1 h, then hourly: never their bodies. */
  function tell(): void {
    const at = now();
    for (const u of list) {
      const s = state.get(u)!;
      if (at - s.since < tellAt(s.told)) continue;
      while (at - s.since >= tellAt(s.told)) s.told++;
      const mins = Math.floor((at - s.since) / 60_000);
      d.log("warn", `Postgres: transaction ${u.xid} (${u.taken.length} messages taken, ${u.leased.length} opened) is still of unknown outcome after ` +
        `${mins} min${s.why === null ? "" : ` (${s.why})`}; asking again about once a second`);
    }
  }

  /**
   * Whether the batch committed. Its xid is only asked about on the server and timeline it ran
   * on: after a failover, the new primary may have given that number to another transaction, or
   * not reached it yet. Elsewhere, or if the server cannot say (no record left of so old an xid),
   * the rows decide: a give-back re-inserts only the taken rows no longer in the table, and ends
   * only leases this node still has as the batch left them. Half the timeout to end its backend:
   * one that does not go in time is answered "in progress" before the entry's bound ends.
   */
  async function outcome(side: SQL, here: string | null, u: Unresolved): Promise<"committed" | "aborted" | "by rows" | null> {
    if (here === null || u.server !== here) return "by rows";
    const status = await d.st.resolve(side, u.xid, u.pid, Math.round(d.timeoutMs / 2), here);
    if (status === "in progress") return null;
    return status === "committed" ? "committed" : status === "aborted" ? "aborted" : "by rows";
  }

  async function giveBack(side: SQL, u: Unresolved, why: "committed" | "by rows"): Promise<void> {
    const key = `${u.server ?? `node ${u.node}`}/${u.xid}`;
    // A lease a later open took again is spared by the statement itself (postgres-outcome-sql.ts giveBack).
    const r = await d.st.giveBack(side, key, d.node, u.node, u.taken, u.leased, u.xid);
    if (r.queues !== null) await d.gaveBack(r.queues); // before saying so: the counters read after say it too
    const how = why === "committed" ? "had committed" : `cannot be asked about on this server (${u.server === null ? "unknown server" : "another server or timeline"})`;
    if (r.settled === 0) d.log("info", `Postgres: transaction ${u.xid} ${how}: given back already`);
    else d.log("warn", `Postgres: transaction ${u.xid} ${how}: gave back ${r.back} messages taken and ${r.released} opened`);
    if (u.unanswered > 0 && why === "committed") {
      d.log("warn", `Postgres: transaction ${u.xid} had committed, and ${u.unanswered} of its take statements never answered: what they took is gone`);
    }
  }

  /**
   * A clean stop, if batches are pending: one last ask once `first` settles (the last batch, which
   * may add one), all within `budgetMs`. With none pending it waits for nothing (a Postgres that
   * froze under the last batch must not double the stop's time for no entry).
   */
  async function askLast(budgetMs: number, first: Promise<unknown>): Promise<void> {
    if (list.length > 0) await bounded(first.catch(() => {}).then(ask), budgetMs).catch(() => {});
  }

  /** At the end of a stop, says what is left: kept in the file for the next start on this directory, or lost with this process. */
  function sayLeft(): void {
    if (list.length === 0) return;
    const lost = file.path === null ? list : list.filter((u) => unsaved.has(u));
    const kept = list.length - lost.length;
    const xids = (l: Unresolved[]) => l.map((u) => u.xid).join(", ");
    if (kept > 0) {
      d.log("warn", `Postgres: stopping with ${kept} batches of unknown outcome (transactions ${xids(list.filter((u) => !lost.includes(u)))}): ` +
        `kept in ${file.path}; the next start on this data directory asks about them`);
    }
    if (lost.length > 0) {
      d.log("warn", `Postgres: stopping with ${lost.length} batches of unknown outcome (transactions ${xids(lost)}) ` +
        `${file.path === null ? "and no data directory" : `not in ${file.path}`}: they are not asked about again; what they took, if they committed, stays taken`);
    }
  }

  return {
    keep,
    ask,
    askLast,
    sayLeft,
    /** Batches kept, not yet settled. */
    pending: () => list.length,
  };
}
