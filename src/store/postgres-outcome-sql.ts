/**
 * The statements that find out what became of a batch whose COMMIT got no answer, and give back
 * what a batch that landed unanswered took (postgres-batches.ts resolveCommit, postgres-unknown.ts;
 * docs/design.md "A COMMIT with no answer" and "An outcome that stays unknown").
 */
import type { SQL } from "bun";
import { perRows, upsertInto, type Row } from "./postgres-sql";

/**
 * The server a connection writes to, as SQL: an xid is only meaningful with it. Its system
 * identifier (which a standby shares), its current timeline (the WAL file name's first 8 digits:
 * a promoted standby starts a new one, and may hand out the xids the old primary had handed out),
 * and when it last started: a crash restart keeps both, yet hands out again the xids whose WAL
 * never reached the disk. The checkpointer's start marks a crash reinitialization too (the
 * postmaster stays up through it, and so does pg_postmaster_start_time()); only roles that may see
 * other sessions see it, so the others fall back on the postmaster's start (docs/design.md).
 */
export const IDENTITY = `(SELECT system_identifier::text FROM pg_control_system()) || '/' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)
  || '/' || (extract(epoch FROM coalesce((SELECT max(backend_start) FROM pg_stat_activity WHERE backend_type = 'checkpointer'), pg_postmaster_start_time())) * 1000000)::int8::text`;

/**
 * A backend mcq may end to settle a batch's outcome: not one waiting for a synchronous standby
 * (wait_event SyncRep: ending it commits the transaction on the primary alone, "committed locally,
 * but might not have been replicated", and a failover then loses it), nor, where a synchronous
 * standby is configured, one running its COMMIT at all: caught before its wait begins (writing its
 * commit record on a stalled disk), the end is pending when the wait starts, and Postgres then
 * gives up the wait at once, with the same result (review 10b R1). Such a COMMIT's xid stays in
 * progress until the standby answers: its batch is kept and asked about later.
 */
const ENDABLE = `wait_event IS DISTINCT FROM 'SyncRep'
  AND NOT (state = 'active' AND upper(btrim(query, E' \\t\\r\\n;')) = 'COMMIT' AND current_setting('synchronous_standby_names') <> '')`;

export function outcomeStatements(schema: string) {
  const M = `${schema}.mcq_messages`;
  const C = `${schema}.mcq_counters`;
  const upsert = (node: string, select: string) => upsertInto(C, node, select);
  return {
    /** Early in every batch: its backend (assigns no transaction id). */
    pid: async (sql: SQL) => ((await sql`SELECT pg_backend_pid() AS pid`.execute()) as { pid: number }[])[0]!.pid,
    /**
     * The last statement before every batch's COMMIT: its transaction id and its backend, answered
     * before the COMMIT runs, so that a COMMIT whose answer never came can be resolved (resolve
     * below). Asked last, and only if assigned: pg_current_xact_id() would give a read-only batch
     * (an empty get, a peek) an id and a commit record to flush. xid null: it wrote nothing.
     */
    xact: async (sql: SQL) =>
      ((await sql`SELECT pg_current_xact_id_if_assigned()::text AS xid, pg_backend_pid() AS pid`.execute()) as { xid: string | null; pid: number }[])[0]!,
    /**
     * What became of transaction `xid` of backend `pid` on `server` (identity below), asked on
     * another connection: the backend is ended first if it is still in that transaction (a COMMIT
     * held up by a deferred trigger, a synchronous standby that lags), waiting up to `waitMs` for
     * it to go, so that the answer is final. backend_xid, not the pid alone: a pid reused by
     * another backend is not ended. The status is read in one statement with the identity of the
     * server that answers it: an xid means nothing on another server (a failover, a restart), so
     * there the answer is 'another server' (nothing ended, the status not trusted). Otherwise
     * 'committed', 'aborted', 'in progress' (it could not be ended, or it waits for a synchronous
     * standby), or null (no record of it). A backend waiting for a synchronous standby
     * (wait_event SyncRep) is never ended: ending it commits the transaction on the primary alone
     * ("committed locally, but might not have been replicated"), and a failover then loses it; its
     * xid stays in progress until the standby answers, so the batch is kept and asked about later.
     */
    resolve: async (sql: SQL, xid: string, pid: number, waitMs: number, server: string) => {
      const xid32 = String(BigInt(xid) & 0xffffffffn);
      await sql.unsafe(
        `SELECT pg_terminate_backend(pid, $3::int8) FROM pg_stat_activity WHERE pid = $1::int AND backend_xid = $2::text::xid
           AND ${ENDABLE} AND (${IDENTITY}) = $4`,
        [pid, xid32, waitMs, server],
      ).execute();
      const rows = (await sql.unsafe(`SELECT pg_xact_status($1::text::xid8) AS status, (${IDENTITY}) AS server`, [xid]).execute()) as {
        status: string | null;
        server: string | null;
      }[];
      return rows[0]!.server === server ? rows[0]!.status : "another server";
    },
    /**
     * Ends backend `pid` of the connection named `app` (its application_name, unique per
     * connection: postgres-hosts.ts probe) on `server`, waiting up to `waitMs` for it to go: a batch
     * whose transaction id never came back (postgres-resolve.ts endUnanswered). By the pid: the
     * batch's connection is still open, so its backend still has that pid. 'ended', 'gone' (no
     * such backend: it had ended already, or this is another server), 'not ended' (it did not go
     * in time, or it may not be ended: ENDABLE), or 'another server' (nothing ended). `server`
     * null: its identity cannot be read here (a managed server), so the name alone tells the
     * backend from another server's with the same pid (review 10a H1).
     */
    end: async (sql: SQL, pid: number, waitMs: number, server: string | null, app: string | null) => {
      const params: unknown[] = [pid, waitMs];
      const arg = (v: string) => `$${params.push(v)}`;
      const named = app === null ? "" : ` AND application_name = ${arg(app)}`;
      const here = server === null ? "" : ` AND (${IDENTITY}) = ${arg(server)}`;
      const rows = (await sql.unsafe(
        `SELECT ${server === null ? "NULL::text" : `(${IDENTITY})`} AS server,
           (SELECT ${ENDABLE} AND pg_terminate_backend(pid, $2::int8) FROM pg_stat_activity WHERE pid = $1::int${named}${here}) AS ended`,
        params,
      ).execute()) as { server: string | null; ended: boolean | null }[];
      const r = rows[0]!;
      return r.server !== server ? "another server" : r.ended === null ? "gone" : r.ended ? "ended" : "not ended";
    },
    /**
     * The server this connection writes to (IDENTITY). Throws if it cannot be read: a server that
     * never lets it be read (a managed one) is told from a passing failure by the caller
     * (postgres-hosts.ts identityReader), which alone may decide that no xid is trusted.
     */
    identity: async (sql: SQL): Promise<string> => {
      const rows = (await sql.unsafe(`SELECT (${IDENTITY}) AS id`).execute()) as { id: string }[];
      return rows[0]!.id;
    },
    /**
     * Gives back what the takes of a batch that landed unanswered took (postgres-unknown.ts), as
     * one statement, so it commits whole and on its own: the dequeued rows go back under their own
     * ids (where they were in their queues; one still there stays as it is), the leases of
     * `owner` end, and the counts of what this puts back are undone in `node`'s counters.
     *
     * A lease ends only if the row is still as transaction `xid` (the batch) left it: xmin, the
     * transaction that wrote the row's version, is the batch's. A later open of the message (by a
     * session of this node: the same owner) wrote a version of its own, so it is not ended; and
     * one committing while this runs holds the row, which this statement waits for, then judges
     * the version it committed (READ COMMITTED re-checks the row). So the check is in the
     * statement, not before it (review 6: a check of what the node holds, made before the
     * statement, missed an open that committed in between). If the batch rolled back, its version
     * is gone: nothing of it is ended. Only a reused xid number (a promoted standby's, when the
     * rows decide) opening the same message for the same node could pass for the batch. `key`
     * names the batch in mcq_settled: a second give-back of it (a crash before this node forgot
     * it, an answer lost) finds it there and changes nothing. Settlements older than a week go.
     */
    giveBack: async (sql: SQL, key: string, node: number, owner: number, rows: Required<Row>[], leased: number[], xid: string) => {
      const col = <T>(f: (r: Required<Row>) => T) => rows.map(f);
      const out = (await sql.unsafe(
        `WITH old AS (DELETE FROM ${schema}.mcq_settled WHERE at < now() - interval '7 days'),
           s AS (INSERT INTO ${schema}.mcq_settled (key) VALUES ($1) ON CONFLICT DO NOTHING RETURNING key),
           r AS (INSERT INTO ${M} (id, queue, flags, created, expires, deliveries, body)
             SELECT t.* FROM unnest($2::int8[], $3::text[], $4::int8[], $5::int8[], $6::int8[], $7::int[], $8::bytea[])
               AS t (id, queue, flags, created, expires, deliveries, body)
             WHERE EXISTS (SELECT 1 FROM s)
               -- not into a queue deleted since (no counter rows left: an older node's delete leaves no mark)
               AND EXISTS (SELECT 1 FROM ${C} k WHERE k.queue = t.queue)
               -- nor from before a flush or delete of its queue, or of all
               AND t.id > ALL (SELECT upto FROM ${schema}.mcq_flushed f WHERE f.queue IN (t.queue, ''))
             ON CONFLICT (id) DO NOTHING RETURNING queue, length(body) AS len),
           u AS (UPDATE ${M} SET owner = NULL WHERE id = ANY($9::int8[]) AND owner = $10 AND xmin = $12::text::xid AND EXISTS (SELECT 1 FROM s) RETURNING queue),
           c AS (${upsert("$11::int", perRows([
             { from: "r", queue: "queue", c: { items: "1", bytes: "len", fetched: "-1" } },
             { from: "u", queue: "queue", c: { open: "-1" } },
           ]))})
         SELECT (SELECT count(*) FROM s)::int AS settled, (SELECT count(*) FROM r)::int AS back, (SELECT count(*) FROM u)::int AS released,
           (SELECT array_agg(DISTINCT queue) FROM (SELECT queue FROM r UNION SELECT queue FROM u) q) AS queues`,
        [key, col((r) => r.id), col((r) => r.queue), col((r) => r.flags), col((r) => r.created), col((r) => r.expires), col((r) => r.deliveries),
          col((r) => r.body), leased, owner, node, String(BigInt(xid) & 0xffffffffn)],
      ).execute()) as { settled: number; back: number; released: number; queues: string[] | null }[];
      return out[0]!;
    },
  };
}
