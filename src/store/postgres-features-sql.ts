/**
 * The statements of the queue features on Postgres (postgres-features.ts): delayed messages in
 * mcq_delayed, dedup tokens in mcq_dedup, dead-letter moves and redrive inside mcq_messages.
 * Every time is Postgres's (statement_timestamp), never a node's clock: nodes may disagree on time.
 * Like postgres-sql.ts, each statement takes a whole group of like operations of one batch.
 */
import type { SQL } from "bun";
import { DEAD, perQueue, perRows, upsertInto } from "./postgres-sql";

/** A set with a delay or a token (or a fanout copy guarded by its parent's token). */
export interface FeatureInsert {
  queue: string;
  flags: number;
  created: number;
  expires: number;
  body: Uint8Array;
  /** ms from now until due (0: due now, into mcq_messages). */
  delay: number;
  /** The token that must be new for this row to be stored, and whose queue holds it; or null. */
  token: string | null;
  tokenQueue: string | null;
  /** Whether this row writes the token (the set itself), or only depends on it (a fanout copy). */
  own: boolean;
  /** The dedup window in ms (own rows). */
  window: number;
}

/** A discard_old before a set (postgres-discard.ts): the limits, the set's size, the batch's changes so far. */
export interface Discard {
  queue: string;
  maxItems: number;
  maxBytes: number;
  adding: number;
  pendItems: number;
  pendBytes: number;
  /** The token the set depends on (its own, or its parent's for a fanout copy), and its queue; or null. */
  token: string | null;
  tokenQueue: string | null;
}

export function featureStatements(schema: string, channel: string) {
  const M = `${schema}.mcq_messages`;
  const C = `${schema}.mcq_counters`;
  const DL = `${schema}.mcq_delayed`;
  const DD = `${schema}.mcq_dedup`;
  const pgNow = "(extract(epoch FROM statement_timestamp()) * 1000)::int8";
  const live = `m.owner IS NULL AND (m.expires = 0 OR m.expires > ${pgNow})`;
  /** A node hears of the earliest new due time (postgres-features.ts arm): delivered at commit. */
  const dueNotice = (from: string) => `SELECT pg_notify('${channel}', ' due ' || min(due)) FROM ${from} HAVING count(*) > 0`;
  /**
   * Counts in `node`'s rows what only the statement knows (postgres-sql.ts upsertInto): the
   * batch's own counter upsert is sent with the batch, before any statement has answered.
   */
  const upsert = (node: string, select: string) => upsertInto(C, node, select);

  return {
    /**
     * Stores sets with a delay or a token in one statement. A token is written unless a live one
     * is there (ON CONFLICT waits for another node's uncommitted set of it, then sees it); a row
     * whose token was not written is not stored. The batch counts every row as stored: this
     * statement takes back, in `node`'s counters, what it turned away, and counts the sets
     * themselves (own rows) as deduplicated. Returns the ordinals (1-based) of those rows, and
     * the earliest due time written.
     */
    insert: async (sql: SQL, rows: FeatureInsert[], node: number): Promise<{ turnedAway: number[]; due: number | null }> => {
      const offsets: number[] = [];
      let at = 1;
      for (const r of rows) {
        offsets.push(at);
        at += r.body.length;
      }
      const col = <T>(f: (r: FeatureInsert) => T) => rows.map(f);
      const out = (await sql.unsafe(
        `WITH r AS (SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[], $4::int8[], $5::int[], $6::int[], $8::int8[], $9::text[], $10::text[], $11::bool[], $12::int8[])
             WITH ORDINALITY AS r(queue, flags, created, expires, off, len, delay, token, tq, own, win, i)),
           -- Token rows in one order on every node: two batches with the same tokens in other orders would deadlock.
           tok AS (INSERT INTO ${DD} AS d (queue, token, until) SELECT tq, token, ${pgNow} + win FROM r WHERE own AND token IS NOT NULL ORDER BY tq, token
             ON CONFLICT (queue, token) DO UPDATE SET until = excluded.until WHERE d.until <= ${pgNow} RETURNING queue, token),
           ok AS (SELECT r.*, CASE WHEN r.expires = 0 THEN 0 ELSE r.expires - r.created + ${pgNow} END AS exp FROM r
             WHERE r.token IS NULL OR EXISTS (SELECT 1 FROM tok WHERE tok.queue = r.tq AND tok.token = r.token)
               -- A fanout copy whose parent's statement came before (a discard_old between them): the
               -- token row this transaction wrote.
               OR (NOT r.own AND EXISTS (SELECT 1 FROM ${DD} t WHERE t.queue = r.tq AND t.token = r.token AND t.xmin = pg_current_xact_id()::xid))),
           now_ AS (INSERT INTO ${M} (queue, flags, created, expires, body)
             SELECT queue, flags, created, exp, substring($7::bytea FROM off FOR len) FROM ok WHERE delay = 0 ORDER BY i),
           later AS (INSERT INTO ${DL} (queue, flags, created, expires, due, body)
             SELECT queue, flags, created, exp, ${pgNow} + delay, substring($7::bytea FROM off FOR len) FROM ok WHERE delay > 0 ORDER BY i
             RETURNING due),
           notice AS (${dueNotice("later")}),
           away AS (SELECT * FROM r WHERE NOT EXISTS (SELECT 1 FROM ok WHERE ok.i = r.i)),
           c AS (${upsert("$13::int", perRows([{ from: "away", queue: "queue", c: {
             total: "-1", items: "-1", bytes: "-len", delayed: "CASE WHEN delay > 0 THEN -1 ELSE 0 END", deduplicated: "CASE WHEN own THEN 1 ELSE 0 END",
           } }]))})
         SELECT (SELECT count(*) FROM notice)::int AS n, (SELECT min(due) FROM later)::float8 AS due,
           coalesce((SELECT string_agg(i::text, ',') FROM away), '') AS dup`,
        [col((r) => r.queue), col((r) => r.flags), col((r) => r.created), col((r) => r.expires), offsets, col((r) => r.body.length),
          Buffer.concat(col((r) => r.body)), col((r) => r.delay), col((r) => r.token), col((r) => r.tokenQueue), col((r) => r.own),
          col((r) => r.window), node],
      ).execute()) as { dup: string; due: number | null }[];
      // One row, always: the notice is sent whether or not a set was turned away.
      const { dup, due } = out[0]!;
      return { turnedAway: dup === "" ? [] : dup.split(",").map(Number), due };
    },

    /**
     * Open messages of `node` back to mcq_delayed, due after their delay, counted (open to
     * delayed) in `node`'s rows as they are found; returns the ids found and the earliest due.
     */
    later: async (sql: SQL, ids: number[], delays: number[], node: number): Promise<{ found: Set<number>; due: number | null }> => {
      const out = (await sql.unsafe(
        `WITH d AS (DELETE FROM ${M} m USING unnest($1::int8[], $2::int8[]) AS r(id, delay) WHERE m.id = r.id AND m.owner = $3
             RETURNING m.*, r.delay),
           i AS (INSERT INTO ${DL} (queue, flags, created, expires, due, deliveries, body)
             SELECT queue, flags, created, expires, ${pgNow} + delay, deliveries, body FROM d ORDER BY id RETURNING due),
           notice AS (${dueNotice("i")}),
           c AS (${upsert("$3::int", perQueue("d", { open: "-count(*)", delayed: "count(*)" }))})
         SELECT d.id::float8 AS id, (SELECT count(*) FROM notice)::int AS n, (SELECT min(due) FROM i)::float8 AS due FROM d`,
        [ids, delays, node],
      ).execute()) as { id: number; due: number }[];
      return { found: new Set(out.map((r) => r.id)), due: out[0]?.due ?? null };
    },

    /**
     * Moves open messages (of `owners`) to the tails of their targets, under new ids, their
     * delivery counts reset: the DELETE and the INSERT are one statement, so after kill -9 each
     * is in exactly one queue. What it moved is counted in `node`'s rows, out of the queue (as
     * fetched and dead-lettered) and into the target. Returns the ids found, with their bodies' lengths.
     */
    move: async (sql: SQL, ids: number[], targets: string[], owners: number[], node: number) =>
      (await sql.unsafe(
        `WITH d AS (DELETE FROM ${M} m USING unnest($1::int8[], $2::text[]) WITH ORDINALITY AS r(id, target, i)
             WHERE m.id = r.id AND m.owner = ANY($3::int[]) RETURNING m.id, m.queue, m.flags, m.created, m.expires, m.body, r.target, r.i),
           i AS (INSERT INTO ${M} (queue, flags, created, expires, body) SELECT target, flags, created, expires, body FROM d ORDER BY i),
           c AS (${upsert("$4::int", perRows([
             { from: "d", queue: "queue", c: { items: "-1", bytes: "-length(body)", open: "-1", fetched: "1", deadLettered: "1" } },
             { from: "d", queue: "target", c: { total: "1", items: "1", bytes: "length(body)" } },
           ]))})
         SELECT id::float8 AS id, length(body)::int AS bytes FROM d`,
        [ids, targets, owners, node],
      ).execute()) as { id: number; bytes: number }[],

    /**
     * Every waiting message of `from` to the tail of `to`, in order, under new ids, counts reset;
     * counted in `node`'s rows (out of `from` as fetched, into `to`), since only this statement knows how many.
     */
    redrive: async (sql: SQL, from: string, to: string, node: number) =>
      ((await sql.unsafe(
        `WITH d AS (DELETE FROM ${M} WHERE id IN (SELECT id FROM ${M} WHERE queue = $1 AND owner IS NULL ORDER BY id FOR UPDATE SKIP LOCKED)
             RETURNING id, flags, created, expires, body),
           i AS (INSERT INTO ${M} (queue, flags, created, expires, body) SELECT $2, flags, created, expires, body FROM d ORDER BY id
             RETURNING queue, length(body) AS len),
           c AS (${upsert("$3::int", perRows([
             { from: "i", queue: "$1::text", c: { items: "-1", bytes: "-len", fetched: "1" } },
             { from: "i", queue: "queue", c: { total: "1", items: "1", bytes: "len" } },
           ]))})
         SELECT count(*)::int AS n, coalesce(sum(len), 0)::float8 AS bytes FROM i`,
        [from, to, node],
      ).execute()) as { n: number; bytes: number }[])[0]!,

    /**
     * discard_old (postgres-discard.ts): drops the oldest messages of `d.queue` that may be handed
     * out (not open, not delayed, not expired) until a set of `d.adding` bytes fits its limits,
     * judged on what Postgres holds: every node's counter rows, plus the batch's own changes not
     * yet counted there (`pendItems`, `pendBytes`). Rows another node has locked are skipped,
     * an open one is never dropped. Nothing is dropped for a set that a live token turns away
     * (one not written by this transaction: a fanout copy's parent may have written it just
     * before). Counted in `node`'s rows as fetched and discarded; returns what it dropped.
     */
    discard: async (sql: SQL, d: Discard, node: number) =>
      ((await sql.unsafe(
        `WITH RECURSIVE s AS (SELECT coalesce(sum(items), 0) + $5::int8 AS items, coalesce(sum(bytes), 0) + $6::int8 AS bytes FROM ${C} WHERE queue = $1),
           need AS (SELECT CASE WHEN $2::int8 > 0 THEN items + 1 - $2::int8 ELSE 0 END AS n,
               CASE WHEN $3::int8 > 0 THEN bytes + $4::int8 - $3::int8 ELSE 0 END AS b FROM s
             WHERE $7::text IS NULL OR NOT EXISTS (SELECT 1 FROM ${DD} t WHERE t.queue = $8::text AND t.token = $7::text
               AND t.until > ${pgNow} AND t.xmin <> pg_current_xact_id()::xid)),
           -- The oldest first, one index step at a time, until enough items and bytes are found.
           w AS ((SELECT m.id, length(m.body)::int8 AS total, 1 AS k FROM ${M} m, need WHERE (need.n > 0 OR need.b > 0)
               AND m.queue = $1 AND ${live} ORDER BY m.id LIMIT 1)
             UNION ALL
             SELECT x.id, w.total + x.len, w.k + 1 FROM w CROSS JOIN need CROSS JOIN LATERAL (
               SELECT m.id, length(m.body)::int8 AS len FROM ${M} m WHERE m.queue = $1 AND ${live} AND m.id > w.id ORDER BY m.id LIMIT 1) x
             WHERE w.k < need.n OR w.total < need.b),
           pick AS (SELECT id FROM ${M} WHERE id IN (SELECT id FROM w) AND owner IS NULL FOR UPDATE SKIP LOCKED),
           d AS (DELETE FROM ${M} WHERE id IN (SELECT id FROM pick) RETURNING queue, length(body) AS len),
           c AS (${upsert("$9::int", perQueue("d", { items: "-count(*)", bytes: "-sum(len)", fetched: "count(*)", discarded: "count(*)" }))})
         SELECT count(*)::int AS n, coalesce(sum(len), 0)::float8 AS bytes FROM d`,
        [d.queue, d.maxItems, d.maxBytes, d.adding, d.pendItems, d.pendBytes, d.token, d.tokenQueue, node],
      ).execute()) as { n: number; bytes: number }[])[0]!,

    /**
     * Moves up to `limit` due messages to the tails of their queues (by due time, then arrival),
     * counts them out of `delayed` in this node's row and notifies their queues, in one statement.
     */
    promote: async (sql: SQL, limit: number, node: number) =>
      ((await sql.unsafe(
        `WITH d AS (DELETE FROM ${DL} WHERE id IN (SELECT id FROM ${DL} WHERE due <= ${pgNow} ORDER BY due, id LIMIT $1 FOR UPDATE SKIP LOCKED)
             RETURNING *),
           i AS (INSERT INTO ${M} (queue, flags, created, expires, deliveries, body)
             SELECT queue, flags, created, expires, deliveries, body FROM d ORDER BY due, id RETURNING queue),
           g AS (SELECT queue, count(*) AS n FROM i GROUP BY queue),
           c AS (INSERT INTO ${C} AS c (node, queue, delayed) SELECT $2, queue, -n FROM g
             ON CONFLICT (queue, node) DO UPDATE SET delayed = c.delayed + excluded.delayed),
           w AS (SELECT pg_notify('${channel}', queue) FROM g)
         SELECT queue, n::int AS n, (SELECT count(*) FROM w)::int AS w FROM g`,
        [limit, node],
      ).execute()) as { queue: string; n: number }[]),

    /** The earliest due time, and Postgres's time now (both ms on Postgres's clock). */
    nextDue: async (sql: SQL) =>
      ((await sql.unsafe(`SELECT (SELECT min(due) FROM ${DL})::float8 AS next, ${pgNow}::float8 AS now`).execute()) as {
        next: number | null;
        now: number;
      }[])[0]!,

    /** Forgets up to `limit` tokens whose window ended. */
    sweepTokens: (sql: SQL, limit: number) =>
      sql.unsafe(
        `DELETE FROM ${DD} WHERE (queue, token) IN (SELECT queue, token FROM ${DD} WHERE until <= ${pgNow} LIMIT $1 FOR UPDATE SKIP LOCKED)`,
        [limit],
      ).execute(),

    /** The open messages of `owners` that were delivered at least once: reaping may dead-letter them. */
    openOf: async (sql: SQL, owners: number[]) =>
      (await sql.unsafe(
        `SELECT id::float8 AS id, queue, deliveries FROM ${M} WHERE owner = ANY($1::int[]) AND deliveries > 0`,
        [owners],
      ).execute()) as { id: number; queue: string; deliveries: number }[],

    /** Nodes silent past their own lease (postgres-sql.ts DEAD; `witnessedS`: how long the reaper has been connected), or the one given. */
    // With the owners of open messages that have no node row (postgres-sql.ts orphaned), which the reap frees too.
    deadNodes: async (sql: SQL, leaseS: number, only: number | null, witnessedS: number) =>
      ((await sql.unsafe(
        `SELECT id FROM ${schema}.mcq_nodes WHERE ${only === null ? DEAD : "id = $1"}
         UNION SELECT DISTINCT owner FROM ${M} WHERE owner IS NOT NULL AND owner NOT IN (SELECT id FROM ${schema}.mcq_nodes)`,
        only === null ? [leaseS, witnessedS] : [only],
      ).execute()) as { id: number }[]).map((r) => r.id),

    notify: (sql: SQL, queues: string[]) =>
      sql.unsafe(`SELECT pg_notify('${channel}', q) FROM unnest($1::text[]) AS q`, [queues]).execute(),
  };
}

export type FeatureStatements = ReturnType<typeof featureStatements>;
