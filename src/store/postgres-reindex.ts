/**
 * Index upkeep on the Postgres store (issue 10, table health). Vacuum frees the heap of
 * mcq_messages and truncates it, but a B-tree index file never shrinks: after a flow or a backlog
 * it keeps the size the most rows between two vacuums needed (docs/performance.md, "Postgres
 * table health"). `REINDEX INDEX CONCURRENTLY` builds it again from the live rows without
 * stopping sets and gets, so every `intervalS` a node looks, and rebuilds what is far too big:
 *
 *   - on a connection of its own, never the batch connection, and never in a transaction (REINDEX
 *     CONCURRENTLY refuses to run in one); a session-level advisory lock makes it one node at a
 *     time (the others skip that check); on a standby (after a failover, before this node moved),
 *     nothing;
 *   - first drops what an unfinished reindex left: an INVALID index named `<index>_ccnew` or
 *     `_ccold` (a cancelled or failed REINDEX CONCURRENTLY leaves one, and inserts keep
 *     maintaining it); other invalid indexes are not mcq's to drop;
 *   - then rebuilds each B-tree index of mcq's tables over `floorBytes` and more than `ratio`
 *     times what it needs: an entry for every live row and for every row written since the last
 *     check (a flow's entries stay in the index until the next vacuum, so an index rebuilt in
 *     the middle of a flow would only grow back); estimated from the statistics, rows × entry
 *     width at 90% fill. So a flow is left alone, and its indexes are rebuilt at the first check
 *     after it ends. A node's first check only reads where the write counters stand;
 *   - logs each rebuild at info with the sizes before and after; a rebuild that failed (it
 *     waited past lock_timeout, say) is not tried again for COOLDOWN checks;
 *   - bounded: `lock_timeout` caps each wait for older transactions (REINDEX CONCURRENTLY waits for
 *     every transaction older than its own), `statement_timeout` the whole statement; stop() closes
 *     the connection without waiting, and `client_connection_check_interval` makes Postgres end the
 *     statement once its client is gone, so a node's stop never waits for a reindex;
 *   - it needs to own the tables (mcq makes them, so it does unless an operator changed the owner):
 *     a role that does not is told once, and the check stops for good.
 */
import type { SQL } from "bun";
import { WRITABLE } from "./postgres-hosts";

export interface ReindexOptions {
  /** The schema holding mcq's tables (validated by parseStoreUrl). */
  schema: string;
  /** Seconds between checks; 0: never. */
  intervalS: number;
  /** A new connection of its own to the host in use. */
  connect(): SQL;
  log(level: "info" | "warn" | "debug", message: string): void;
  /** An index smaller than this is left alone. */
  floorBytes?: number;
  /** Rebuilt only when more than this many times what it needs. */
  ratio?: number;
  lockTimeoutMs?: number;
  statementTimeoutMs?: number;
}

/** What one check did (for tests and the bench). */
export interface CheckResult {
  skipped?: "standby" | "read-only" | "locked" | "not owner" | "stopped";
  dropped: string[];
  rebuilt: { index: string; before: number; after: number; ms: number }[];
  failed: { index: string; reason: string }[];
}

export interface Reindexer {
  /** Called from the store's maintain(): starts a check when one is due (`now`: ms). */
  tick(now: number): void;
  /** Runs one check now (`now`: ms, for the write rate). */
  check(now?: number): Promise<CheckResult>;
  /** Abandons a check in progress without waiting for it; no check runs after. */
  stop(): void;
}

/** 1 MB: a rebuild of an index this small saves little (docs/performance.md, "Postgres table health"). */
export const FLOOR_BYTES = 1024 * 1024;
export const RATIO = 4;
/** Checks an index waits after a rebuild of it failed. */
const COOLDOWN = 10;
const PAGE = 8192;
/** Bytes of a B-tree page that hold entries: 90% leaf fill (the default fillfactor), less the page header. */
const PAGE_ROOM = 0.9 * PAGE - 24;
/** Pages any B-tree has beyond its leaves' share: the metapage and a root. */
const BASE_PAGES = 2;
const LEFTOVER = /_cc(new|old)\d*$/;

/**
 * One row per index of mcq's tables: its size, its table's live rows and writes so far (inserts
 * and non-HOT updates: each adds an entry), and its key's width (pg_stats, else the type's).
 */
const INDEXES = `
  SELECT ic.relname AS name, t.relname AS "table", i.indisvalid AS valid, pg_relation_size(ic.oid) AS bytes,
         pg_has_role(t.relowner, 'USAGE') AS owned, pg_get_userbyid(t.relowner) AS owner,
         greatest(coalesce(s.n_live_tup, 0), t.reltuples, 0) AS rows,
         coalesce(s.n_tup_ins + s.n_tup_upd - s.n_tup_hot_upd, 0) AS writes,
         (SELECT coalesce(sum(coalesce(st.avg_width, CASE WHEN a.attlen > 0 THEN a.attlen ELSE 16 END)), 16)
            FROM unnest(i.indkey) k LEFT JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k
            LEFT JOIN pg_stats st ON st.schemaname = n.nspname AND st.tablename = t.relname AND st.attname = a.attname) AS width,
         am.amname = 'btree' AS btree
    FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_class t ON t.oid = i.indrelid
    JOIN pg_namespace n ON n.oid = t.relnamespace JOIN pg_am am ON am.oid = ic.relam
    LEFT JOIN pg_stat_user_tables s ON s.relid = t.oid
   WHERE n.nspname = $1 AND t.relname LIKE 'mcq\\_%'
   ORDER BY pg_relation_size(ic.oid) DESC`;

interface IndexRow { name: string; table: string; valid: boolean; bytes: number; owned: boolean; owner: string; rows: number; writes: number; width: number; btree: boolean }

/** The bytes an index needs for `rows` entries of `width` bytes of key: an estimate from above. */
export function neededBytes(rows: number, width: number): number {
  const entry = 12 + Math.ceil(width / 8) * 8; // tuple header 8, line pointer 4, the key maxaligned
  return (BASE_PAGES + Math.ceil((rows * entry) / PAGE_ROOM)) * PAGE;
}

const quote = (name: string) => `"${name.replace(/"/g, '""')}"`;
const kb = (b: number) => `${Math.round(b / 1024).toLocaleString("en")} kB`;
const why = (e: unknown) => (e instanceof Error ? e.message : String(e)).replace(/\s+/g, " ");

export function createReindexer(o: ReindexOptions): Reindexer {
  const floor = o.floorBytes ?? FLOOR_BYTES;
  const ratio = o.ratio ?? RATIO;
  const lockTimeoutMs = o.lockTimeoutMs ?? 30_000;
  const statementTimeoutMs = o.statementTimeoutMs ?? 600_000;
  const lockKey = `mcq-reindex:${o.schema}`;
  let next = o.intervalS > 0 ? Date.now() + o.intervalS * 1000 : Infinity;
  let running = false;
  let stopped = false;
  let notOwner = false;
  /** A failure was logged: the next ones are not, until a check succeeds (an outage is said once). */
  let quiet = false;
  let checks = 0;
  /** Where the tables' write counters stood at the last check that read them. */
  let last: { at: number; writes: Map<string, number> } | null = null;
  /** The check number before which an index whose rebuild failed is not tried again. */
  const cooldown = new Map<string, number>();
  let current: SQL | null = null;

  /** Rows written to each table per interval since the last check; null at the first. */
  function recentWrites(indexes: IndexRow[], now: number): Map<string, number> | null {
    const before = last;
    last = { at: now, writes: new Map(indexes.map((r) => [r.table, r.writes])) };
    if (before === null) return null;
    const per = Math.max(o.intervalS * 1000, now - before.at) / Math.max(1, now - before.at);
    const recent = new Map<string, number>();
    for (const [table, writes] of last.writes) {
      const was = before.writes.get(table) ?? 0;
      recent.set(table, (writes >= was ? writes - was : writes) * per); // the counters were reset: all of them
    }
    return recent;
  }

  async function check(now = Date.now()): Promise<CheckResult> {
    const result: CheckResult = { dropped: [], rebuilt: [], failed: [] };
    if (stopped || notOwner) return { ...result, skipped: stopped ? "stopped" : "not owner" };
    checks++;
    const c = (current = o.connect());
    try {
      // Each as its own statement: several in one would be one implicit transaction block.
      await c.unsafe(`SET lock_timeout = ${lockTimeoutMs}`);
      await c.unsafe(`SET statement_timeout = ${statementTimeoutMs}`);
      await c.unsafe(`SET client_connection_check_interval = 1000`);
      await c.unsafe(`SET application_name = 'mcq reindex'`);
      // A fenced primary too: REINDEX runs in a read-only transaction, and would write a new
      // index and its WAL on a host fenced because its disk is nearly full.
      const [state] = await c.unsafe(WRITABLE);
      if (state.standby || state.readonly) return { ...result, skipped: state.standby ? "standby" : "read-only" };
      const [lock] = await c.unsafe("SELECT pg_try_advisory_lock(hashtext($1)) AS locked", [lockKey]);
      quiet = false;
      if (!lock.locked) {
        o.log("debug", `Postgres: index check skipped: another node holds the reindex lock`);
        return { ...result, skipped: "locked" };
      }
      const indexes: IndexRow[] = (await c.unsafe(INDEXES, [o.schema])).map((r: IndexRow) => ({
        ...r, bytes: Number(r.bytes), rows: Number(r.rows), writes: Number(r.writes), width: Number(r.width),
      }));
      const other = indexes.find((r) => !r.owned);
      if (other !== undefined) {
        notOwner = true;
        o.log("warn", `Postgres: index upkeep is off: this role does not own ${o.schema}.${other.table} (its owner is ${other.owner}), ` +
          `and REINDEX needs the owner; run REINDEX TABLE CONCURRENTLY as ${other.owner}, or give the tables to this role`);
        return { ...result, skipped: "not owner" };
      }
      await dropLeftovers(c, indexes, result);
      const recent = recentWrites(indexes, now);
      for (const r of recent === null ? [] : indexes) {
        if (!r.valid || !r.btree || LEFTOVER.test(r.name) || (cooldown.get(r.name) ?? 0) > checks) continue;
        const needed = neededBytes(r.rows + recent!.get(r.table)!, r.width);
        if (r.bytes <= floor || r.bytes <= ratio * needed) continue;
        await rebuild(c, r, needed, result);
      }
      await c.unsafe("SELECT pg_advisory_unlock(hashtext($1))", [lockKey]);
      o.log("debug", `Postgres: index check done: ${result.rebuilt.length} rebuilt, ${result.dropped.length} dropped, ${result.failed.length} failed`);
      return result;
    } catch (e) {
      if (stopped) return { ...result, skipped: "stopped" };
      if (!quiet) o.log("warn", `Postgres: index check: ${why(e)}`);
      quiet = true;
      result.failed.push({ index: "", reason: why(e) });
      return result;
    } finally {
      current = null;
      void c.close({ timeout: 0 }).catch(() => {}); // its backend ends: the session lock goes with it
    }
  }

  /** Drops the INVALID `_ccnew`/`_ccold` indexes an unfinished REINDEX CONCURRENTLY left. */
  async function dropLeftovers(c: SQL, indexes: IndexRow[], result: CheckResult): Promise<void> {
    for (const r of indexes) {
      if (r.valid || !LEFTOVER.test(r.name)) continue;
      try {
        await c.unsafe(`DROP INDEX CONCURRENTLY IF EXISTS ${o.schema}.${quote(r.name)}`);
        result.dropped.push(r.name);
        o.log("info", `Postgres: dropped ${o.schema}.${r.name} (${kb(r.bytes)}), left INVALID by a reindex that did not finish`);
      } catch (e) {
        if (stopped) throw e;
        result.failed.push({ index: r.name, reason: why(e) });
        o.log("warn", `Postgres: could not drop ${o.schema}.${r.name}, left by a reindex that did not finish: ${why(e)}; the next check tries again`);
      }
    }
  }

  async function rebuild(c: SQL, r: IndexRow, needed: number, result: CheckResult): Promise<void> {
    const began = Date.now();
    try {
      await c.unsafe(`REINDEX INDEX CONCURRENTLY ${o.schema}.${quote(r.name)}`);
    } catch (e) {
      if (stopped) throw e;
      cooldown.set(r.name, checks + COOLDOWN);
      result.failed.push({ index: r.name, reason: why(e) });
      o.log("warn", `Postgres: REINDEX INDEX CONCURRENTLY ${o.schema}.${r.name} (${kb(r.bytes)}) failed: ${why(e)}; ` +
        `what it left is dropped by the next check, and it is tried again in ${COOLDOWN} checks`);
      return;
    }
    const [size] = await c.unsafe("SELECT pg_relation_size(($1 || '.' || $2)::regclass) AS bytes", [o.schema, quote(r.name)]);
    const after = Number(size.bytes);
    const ms = Date.now() - began;
    result.rebuilt.push({ index: r.name, before: r.bytes, after, ms });
    o.log("info", `Postgres: reindexed ${o.schema}.${r.name}: ${kb(r.bytes)} -> ${kb(after)} in ${ms} ms ` +
      `(it needed about ${kb(needed)})`);
  }

  return {
    tick(now) {
      if (stopped || notOwner || running || now < next) return;
      next = now + o.intervalS * 1000;
      running = true;
      void check(now).finally(() => (running = false));
    },
    check,
    stop() {
      stopped = true;
      next = Infinity;
      const c = current;
      current = null;
      if (c !== null) void c.close({ timeout: 0 }).catch(() => {});
    },
  };
}
