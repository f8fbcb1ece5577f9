/**
 * The Postgres store's statements. Each takes a whole group of like operations of one batch
 * (group commit): one multi-row INSERT for every set, one set-based take per kind for every get,
 * so a turn costs a small constant number of statements whatever its number of requests.
 * Counters come back aggregated per queue, never one row per message.
 */
import type { SQL } from "bun";
import { outcomeStatements } from "./postgres-outcome-sql";

/** Counter changes of one queue: added to this node's row at commit. */
export interface Delta {
  total: number;
  fetched: number;
  items: number;
  bytes: number;
  open: number;
  expired: number;
  /** The queue features' counters (schema version 2, postgres-features.ts). */
  delayed: number;
  deduplicated: number;
  deadLettered: number;
  discarded: number;
  /** Schema version 3: counted by the server (queue-limits.ts), kept per node like the others. */
  deadLetterSkipped: number;
  fanoutRefused: number;
}

export const zero = (): Delta => ({
  total: 0, fetched: 0, items: 0, bytes: 0, open: 0, expired: 0, delayed: 0, deduplicated: 0, deadLettered: 0, discarded: 0,
  deadLetterSkipped: 0, fanoutRefused: 0,
});

/** Delta's fields as mcq_counters' columns, in one order for every statement that lists them. */
export const COUNTERS: [keyof Delta, string][] = [
  ["total", "total"], ["fetched", "fetched"], ["items", "items"], ["bytes", "bytes"], ["open", "open"], ["expired", "expired"],
  ["delayed", "delayed"], ["deduplicated", "deduplicated"], ["deadLettered", "dead_lettered"], ["discarded", "discarded"],
  ["deadLetterSkipped", "dead_letter_skipped"], ["fanoutRefused", "fanout_refused"],
];
const COLUMNS = COUNTERS.map(([, c]) => c);
/** `ON CONFLICT` adding the incoming row to the existing one, column by column. */
const addUp = (table: string) => COLUMNS.map((c) => `${c} = ${table}.${c} + excluded.${c}`).join(", ");

/** A counter change as SQL: per column (Delta's field), an expression; the others are 0. */
export type CounterExprs = Partial<Record<keyof Delta, string>>;
const columnsOf = (c: CounterExprs, wrap: (e: string) => string) =>
  COUNTERS.map(([k, col]) => `${wrap(c[k] ?? "0")}::int8 AS ${col}`).join(", ");

/**
 * Adds counter changes to `node`'s rows of `table`: `select` yields (queue, then every column of
 * COUNTERS), one row per queue. A statement whose effect is only known in Postgres (a take, a
 * confirm, a sweep, a dedup turning a set away, a dead-letter move) counts it itself, in the same
 * statement, since the batch's own counter upsert is sent before any answer comes back.
 */
export const upsertInto = (table: string, node: string, select: string) =>
  `INSERT INTO ${table} (node, queue, ${COLUMNS.join(", ")}) SELECT ${node}, * FROM (${select}) s
   ON CONFLICT (queue, node) DO UPDATE SET ${addUp(table)}`;

/** Per queue of `from` (rows with a queue column): its counter change, each column an aggregate expression. */
export const perQueue = (from: string, c: CounterExprs) => `SELECT queue, ${columnsOf(c, (e) => `(${e})`)} FROM ${from} GROUP BY queue`;

/**
 * Per queue: the sum of every row's change, over parts that each name their rows, the column
 * holding the queue and per-row expressions (a move counts out of one queue and into another,
 * and one queue may be both: one row per queue, or ON CONFLICT would meet it twice).
 */
export const perRows = (parts: { from: string; queue: string; c: CounterExprs }[]) =>
  `SELECT queue, ${COLUMNS.map((c) => `sum(${c})::int8 AS ${c}`).join(", ")} FROM (${parts
    .map((p) => `SELECT ${p.queue} AS queue, ${columnsOf(p.c, (e) => `(${e})`)} FROM ${p.from}`)
    .join(" UNION ALL ")}) x GROUP BY queue`;

export interface Row {
  id: number;
  queue: string;
  flags: number;
  expires: number;
  body: Uint8Array;
  /** How often it was opened (an open returns it, counted: dead letters). */
  deliveries?: number;
  /** Its creation time (a dequeue returns it: what a give-back needs, postgres-unknown.ts). */
  created?: number;
}

/** Per queue: messages and bytes a statement removed, and how many of them were open. */
export interface Removed {
  queue: string;
  n: number;
  bytes: number;
  open: number;
}

/**
 * Which rows of mcq_nodes are dead ($1: the reaper's lease, $2: how long it has itself been
 * connected, s): silent past the node's own lease (review 10a M5: judged by the reaper's, a node
 * with a longer --node-timeout was reaped while it ran), a node of version 5 (no lease) past the
 * reaper's; and only once the reaper has been connected for that lease (postgres-home.ts
 * createWitness): silent so long while the reaper was away, it may be alive and reconnecting too.
 */
export const DEAD = "heartbeat < now() - make_interval(secs => coalesce(lease_s, $1::float8)) AND coalesce(lease_s, $1::float8) <= $2::float8";

/** The statements, with the schema's table names filled in. */
export function statements(schema: string) {
  const M = `${schema}.mcq_messages`;
  const C = `${schema}.mcq_counters`;
  const N = `${schema}.mcq_nodes`;
  const DL = `${schema}.mcq_delayed`;
  /** Records that `queues` (all: '') were flushed or deleted: no give-back brings back a message of before. */
  const mark = (queues: string) =>
    `INSERT INTO ${schema}.mcq_flushed (queue, upto) SELECT q, (SELECT last_value FROM ${schema}.mcq_messages_id_seq) FROM unnest(${queues}) AS q
     ON CONFLICT (queue) DO UPDATE SET upto = excluded.upto`;
  // Time is Postgres's, never a node's clock across nodes. A set's expiry is sent as
  // its node's time to live (expires - created) and stored on Postgres's clock; takes and sweeps
  // compare with Postgres's clock too, so a node whose clock is off neither keeps messages alive
  // nor expires them early for the others. The statement's time, not the transaction's: a batch
  // may gather for some milliseconds (turn.ts).
  const pgNow = "(extract(epoch FROM statement_timestamp()) * 1000)::int8";
  const onPg = (expires: string, created: string) => `CASE WHEN ${expires} = 0 THEN 0 ELSE ${expires} - ${created} + ${pgNow} END`;
  const live = `m.owner IS NULL AND (m.expires = 0 OR m.expires > ${pgNow})`;
  // Per wanted queue, its first n messages that may be handed out and no other node holds.
  const pick = `WITH want AS (SELECT * FROM unnest($1::text[], $2::int[]) AS w(queue, n))
    SELECT p.id FROM want w CROSS JOIN LATERAL (
      SELECT m.id FROM ${M} m WHERE m.queue = w.queue AND ${live} ORDER BY m.id LIMIT w.n FOR UPDATE SKIP LOCKED) p`;
  const message = "id::float8 AS id, queue, flags::float8 AS flags, expires::float8 AS expires, body";
  const removed = (from: string) =>
    `SELECT queue, count(*)::int AS n, sum(len)::float8 AS bytes, count(owner)::int AS open FROM ${from} GROUP BY queue`;
  const rows = (r: any[]): Row[] => r as Row[];
  const upsert = (node: string, select: string) => upsertInto(C, node, select);
  /**
   * An owner with no node row: a node reaped while it ran on (paused past --node-timeout) opened it
   * before its next heartbeat put its row back (heartbeat below), then died. No reaper would ever
   * find it by its row, so every reap frees those too. (mcq_nodes as the statement found it.)
   */
  const orphaned = (owner: string) => `(${owner} IS NOT NULL AND ${owner} NOT IN (SELECT id FROM ${N}))`;
  /** See reap below: dead nodes' rows deleted, their messages freed, their counters moved into node 0's. */
  async function reap(sql: SQL, leaseS: number, only: number | null, witnessedS: number): Promise<number> {
    const folded = COLUMNS.map((c) => (c === "open" ? "coalesce(s.open, 0) - coalesce(r.n, 0)" : `coalesce(s.${c}, 0)`)).join(", ");
    const rows = (await sql.unsafe(
      `WITH dead AS (DELETE FROM ${N} WHERE ${only === null ? DEAD : "id = $1"} RETURNING id),
         freed AS (UPDATE ${M} SET owner = NULL WHERE owner IN (SELECT id FROM dead) OR ${orphaned("owner")} RETURNING queue),
         r AS (SELECT queue, count(*) AS n FROM freed GROUP BY queue),
         gone AS (DELETE FROM ${C} WHERE node IN (SELECT id FROM dead) RETURNING *),
         s AS (SELECT queue, ${COLUMNS.map((c) => `sum(${c}) ${c}`).join(", ")} FROM gone GROUP BY queue),
         f AS (INSERT INTO ${C} (node, queue, ${COLUMNS.join(", ")})
           SELECT 0, coalesce(s.queue, r.queue), ${folded} FROM s FULL JOIN r ON r.queue = s.queue
           ON CONFLICT (queue, node) DO UPDATE SET ${addUp(C)})
       SELECT coalesce(sum(n), 0)::int AS n FROM r`,
      only === null ? [leaseS, witnessedS] : [only],
    ).execute()) as { n: number }[];
    return rows[0]!.n;
  }

  return {
    /**
     * Small bodies travel as one bytea cut up by offsets in Postgres: Bun encodes a bytea[]
     * parameter element by element, many times slower (measured: 1000 x 100 B, 35 ms vs 13 ms).
     */
    insert: (sql: SQL, queues: string[], flags: number[], created: number[], expires: number[], bodies: Uint8Array[]) => {
      const offsets: number[] = [];
      const lengths: number[] = [];
      let at = 1;
      for (const b of bodies) {
        offsets.push(at);
        lengths.push(b.length);
        at += b.length;
      }
      return sql
        .unsafe(
          `INSERT INTO ${M} (queue, flags, created, expires, body)
           SELECT queue, flags, created, ${onPg("expires", "created")}, substring($6::bytea FROM off FOR len)
           FROM unnest($1::text[], $2::int8[], $3::int8[], $4::int8[], $5::int[], $7::int[])
             WITH ORDINALITY AS r(queue, flags, created, expires, off, len, i)
           ORDER BY i`,
          [queues, flags, created, expires, offsets, Buffer.concat(bodies), lengths],
        )
        .execute();
    },
    /** A large body alone: no copy into a joined buffer, no substring over it. */
    insertOne: (sql: SQL, queue: string, flags: number, created: number, expires: number, body: Uint8Array) =>
      sql.unsafe(`INSERT INTO ${M} (queue, flags, created, expires, body) VALUES ($1, $2, $3::int8, ${onPg("$4::int8", "$3::int8")}, $5)`, [queue, flags, created, expires, body]).execute(),
    /** Puts messages back under their own ids (a reply that never reached its client); expiry as read. */
    restore: (sql: SQL, ids: number[], queues: string[], flags: number[], created: number[], expires: number[], bodies: Uint8Array[]) =>
      sql.unsafe(
        `INSERT INTO ${M} (id, queue, flags, created, expires, body)
         SELECT * FROM unnest($1::int8[], $2::text[], $3::int8[], $4::int8[], $5::int8[], $6::bytea[])
         ON CONFLICT (id) DO NOTHING`,
        [ids, queues, flags, created, expires, bodies],
      ).execute(),
    /** Takes the heads of `queues` ($2: how many of each) and counts them as fetched on `node`. */
    dequeue: async (sql: SQL, queues: string[], counts: number[], node: number) =>
      rows(
        await sql.unsafe(
          `WITH picked AS (${pick}), d AS (DELETE FROM ${M} WHERE id IN (SELECT id FROM picked) RETURNING ${message}, created::float8 AS created, deliveries, length(body) AS len),
             c AS (${upsert("$3::int", perQueue("d", { fetched: "count(*)", items: "-count(*)", bytes: "-sum(len)" }))})
           SELECT id, queue, flags, expires, body, created, deliveries FROM d`,
          [queues, counts, node],
        ).execute(),
      ),
    open: async (sql: SQL, queues: string[], counts: number[], node: number) =>
      rows(
        await sql.unsafe(
          // An open counts a delivery (dead letters) and, in this node's counters, the message as open.
          `WITH picked AS (${pick}),
             u AS (UPDATE ${M} SET owner = $3, deliveries = deliveries + 1 WHERE id IN (SELECT id FROM picked) RETURNING ${message}, deliveries),
             c AS (${upsert("$3::int", perQueue("u", { open: "count(*)" }))})
           SELECT * FROM u`,
          [queues, counts, node],
        ).execute(),
      ),
    peek: async (sql: SQL, queues: string[]) =>
      rows(
        await sql.unsafe(
          `SELECT p.* FROM unnest($1::text[]) AS w(queue) CROSS JOIN LATERAL (
             SELECT m.id::float8 AS id, m.queue, m.flags::float8 AS flags, m.expires::float8 AS expires, m.body FROM ${M} m
             WHERE m.queue = w.queue AND ${live} ORDER BY m.id LIMIT 1) p`,
          [queues],
        ).execute(),
      ),
    /** Deletes messages this node holds open and counts them as fetched; returns those it found. */
    confirm: async (sql: SQL, ids: number[], node: number) =>
      (await sql.unsafe(
        `WITH d AS (DELETE FROM ${M} WHERE id = ANY($1::int8[]) AND owner = $2 RETURNING id, queue, length(body) AS len),
           c AS (${upsert("$2::int", perQueue("d", { fetched: "count(*)", items: "-count(*)", bytes: "-sum(len)", open: "-count(*)" }))})
         SELECT id::float8 AS id FROM d`,
        [ids, node],
      ).execute()) as { id: number }[],
    release: async (sql: SQL, ids: number[], node: number) =>
      (await sql.unsafe(
        `WITH u AS (UPDATE ${M} SET owner = NULL WHERE id = ANY($1::int8[]) AND owner = $2 RETURNING id, queue),
           c AS (${upsert("$2::int", perQueue("u", { open: "-count(*)" }))})
         SELECT id::float8 AS id FROM u`,
        [ids, node],
      ).execute()) as { id: number }[],
    /**
     * Empties `queues` (null: every queue), delayed messages too, and counts in `node`'s rows what
     * it deleted: other nodes' sets or a load may have committed more than this node's view knows.
     * Two statements, in the drop's lock order (counter rows, then messages): the first locks
     * `node`'s counter row of every queue it empties that has counter rows (made if missing), in
     * (queue, node) order. Deleting first and counting last, a flush held the messages a drop on
     * another node waited for, while it waited for its counter row, which that drop held: one of
     * them failed with "deadlock detected" (review 9 N3). Only this node's rows: a take elsewhere
     * holds its messages and then waits for its own node's row, which a flush must not hold.
     */
    flush: async (sql: SQL, queues: string[] | null, node: number) => {
      const locked = sql.unsafe(
        `INSERT INTO ${C} AS c (node, queue)
         SELECT $1::int, queue FROM (SELECT DISTINCT queue FROM ${C} ${queues === null ? "" : "WHERE queue = ANY($2::text[])"}) q ORDER BY queue
         ON CONFLICT (queue, node) DO UPDATE SET items = c.items`,
        queues === null ? [node] : [node, queues],
      ).execute();
      const flushed = sql.unsafe(
        `WITH d AS (DELETE FROM ${M} ${queues === null ? "" : "WHERE queue = ANY($1::text[])"} RETURNING queue, length(body) AS len, owner),
           dl AS (DELETE FROM ${DL} ${queues === null ? "" : "WHERE queue = ANY($1::text[])"} RETURNING queue, length(body) AS len),
           f AS (${mark("$1::text[]")}),
           r AS (${perRows([
             { from: "d", queue: "queue", c: { items: "-1", bytes: "-len", open: "-(owner IS NOT NULL)::int" } },
             { from: "dl", queue: "queue", c: { items: "-1", bytes: "-len", delayed: "-1" } },
           ])}),
           c AS (${upsert("$2::int", "SELECT * FROM r")})
         SELECT queue, (-items)::int AS n, (-bytes)::float8 AS bytes, (-open)::int AS open, (-delayed)::int AS delayed FROM r`,
        [queues ?? [""], node],
      ).execute();
      // The lock above made this node's row where it had none: if a drop on another node deleted the
      // queue meanwhile (its rows, which the lock waited for), that row alone would bring the queue
      // back (review 11a F2), and a flush_all would leave one per queue. A row of zeros adds nothing
      // to the sums: it goes (a queue that exists has a row that counted its sets somewhere).
      const pruned = sql.unsafe(
        `DELETE FROM ${C} c WHERE c.node = $1 ${queues === null ? "" : "AND c.queue = ANY($2::text[])"}
           AND NOT EXISTS (SELECT 1 FROM jsonb_each(to_jsonb(c) - 'queue' - 'node') e WHERE e.value <> '0'::jsonb)`,
        queues === null ? [node] : [node, queues],
      ).execute();
      return (await Promise.all([locked, flushed, pruned]))[1] as (Removed & { delayed: number })[];
    },
    /**
     * Deletes queues: their messages, delayed messages and every node's counter rows. Two
     * statements. The first locks every counter row a writer could add to (each node's, the
     * reaper's 0, a load's -1; made if missing), waiting for the writers that hold one: they have
     * committed, messages and counters, when the second statement takes its snapshot, which
     * deletes both; a writer that comes later waits for this batch, and its messages and counters
     * stay together. (In one statement, the counter DELETE waited for a writer and deleted its
     * new counter row, while the message DELETE's older snapshot left its messages without one.)
     * Returns the queues that existed: had counter rows, messages or delayed messages (a queue
     * whose counter rows were lost still has its messages).
     */
    drop: async (sql: SQL, names: string[]) => {
      const queues = [...new Set(names)]; // a batch may delete a queue twice: each row once per statement
      const locked = sql.unsafe(
        `INSERT INTO ${C} AS c (node, queue)
         SELECT n.id, q FROM unnest($1::text[]) AS q, (SELECT id FROM ${N} UNION SELECT 0 UNION SELECT -1) n ORDER BY q, n.id
         ON CONFLICT (queue, node) DO UPDATE SET items = c.items RETURNING queue, node, c.xmax = 0 AS made`,
        [queues],
      ).execute();
      const deleted = sql.unsafe(
        `WITH m AS (DELETE FROM ${M} WHERE queue = ANY($1::text[]) RETURNING queue),
           dl AS (DELETE FROM ${DL} WHERE queue = ANY($1::text[]) RETURNING queue),
           f AS (${mark("$1::text[]")}), c AS (DELETE FROM ${C} WHERE queue = ANY($1::text[]) RETURNING queue, node)
         SELECT queue, node FROM c UNION ALL SELECT DISTINCT queue, NULL::int FROM (SELECT queue FROM m UNION ALL SELECT queue FROM dl) x`,
        [queues],
      ).execute();
      type R = { queue: string; node: number | null; made?: boolean };
      const [mine, gone] = (await Promise.all([locked, deleted])) as [R[], R[]];
      const made = new Set(mine.filter((r) => r.made).map((r) => `${r.node} ${r.queue}`));
      // node null: the queue had messages or delayed messages.
      return [...new Set(gone.filter((r) => r.node === null || !made.has(`${r.node} ${r.queue}`)).map((r) => r.queue))];
    },
    /** Deletes up to `limit` expired messages and counts them as expired on `node`. */
    sweep: async (sql: SQL, limit: number, node: number) =>
      (await sql.unsafe(
        `WITH d AS (DELETE FROM ${M} WHERE id IN (
           SELECT id FROM ${M} m WHERE m.expires > 0 AND m.expires <= ${pgNow} AND m.owner IS NULL LIMIT $1 FOR UPDATE SKIP LOCKED)
           RETURNING queue, length(body) AS len, owner),
           c AS (${upsert("$2::int", perQueue("d", { items: "-count(*)", bytes: "-sum(len)", expired: "count(*)" }))})
         ${removed("d")}`,
        [limit, node],
      ).execute()) as Removed[],
    ...outcomeStatements(schema),
    /** Adds this batch's counter changes to this node's rows. */
    count: (sql: SQL, node: number, deltas: Map<string, Delta>) => {
      const queues: string[] = [];
      const cols: number[][] = COUNTERS.map(() => []);
      for (const [q, d] of deltas) {
        queues.push(q);
        COUNTERS.forEach(([k], i) => cols[i]!.push(d[k]));
      }
      const params = COUNTERS.map((_, i) => `$${i + 3}::int8[]`).join(", ");
      return sql.unsafe(
        `INSERT INTO ${C} (node, queue, ${COLUMNS.join(", ")})
         SELECT $1, * FROM unnest($2::text[], ${params})
         ON CONFLICT (queue, node) DO UPDATE SET ${addUp(C)}`,
        [node, queues, ...cols],
      ).execute();
    },
    /** Wakes waiters on other nodes: delivered when the transaction commits. */
    notify: (sql: SQL, channel: string, queues: string[]) =>
      sql.unsafe(`SELECT pg_notify($1, q) FROM unnest($2::text[]) AS q`, [channel, queues]).execute(),
    /** Every queue's counters summed over the nodes, and the oldest message's creation time. */
    totals: async (sql: SQL) =>
      (await sql.unsafe(
        `SELECT c.*, CASE WHEN c.items > 0 THEN (SELECT m.created::float8 FROM ${M} m WHERE m.queue = c.queue ORDER BY m.id LIMIT 1) END AS oldest
         FROM (SELECT queue, ${COUNTERS.map(([k, c]) => `sum(${c})::float8 AS "${k}"`).join(", ")} FROM ${C} GROUP BY queue) c`,
      ).execute()) as (Delta & { queue: string; oldest: number | null })[],
    /** A new node, with its lease (--node-timeout, s): others judge it by that (DEAD). */
    register: async (sql: SQL, leaseS: number) => Number((await sql.unsafe(`INSERT INTO ${N} (lease_s) VALUES ($1) RETURNING id`, [leaseS]).execute())[0].id),
    /**
     * This node is alive. A node whose row is gone was reaped by another (silent past
     * --node-timeout: a long pause, a partition) while it ran on: the row is put back, so that it
     * is never unregistered (what it opens from here on is reaped if it dies), and whatever it
     * still holds open is returned in the same statement: the reaper returned what it held then,
     * so the node counts everything it held as lost (postgres.ts lost), and what it opened since
     * must not stay owned with no session claiming it. Returns whether the row was back, how many
     * messages this returned (counted in this node's rows), and the shortest lease of the nodes
     * (a node of version 5, with none, counts as `leaseS`): this node beats and reaps as often as
     * that needs (postgres-lease.ts).
     */
    heartbeat: async (sql: SQL, node: number, leaseS: number) => {
      const rows = (await sql.unsafe(
        `WITH beat AS (UPDATE ${N} SET heartbeat = now(), lease_s = $2 WHERE id = $1 RETURNING id),
           back AS (INSERT INTO ${N} (id, lease_s) SELECT $1::int, $2 WHERE NOT EXISTS (SELECT 1 FROM beat) RETURNING id),
           freed AS (UPDATE ${M} SET owner = NULL WHERE owner = $1 AND EXISTS (SELECT 1 FROM back) RETURNING queue),
           c AS (${upsert("$1::int", perQueue("freed", { open: "-count(*)" }))})
         SELECT (SELECT count(*) FROM back)::int AS back, (SELECT count(*) FROM freed)::int AS freed,
           (SELECT min(coalesce(lease_s, $2)) FROM ${N} WHERE id <> $1)::int AS shortest`,
        [node, leaseS],
      ).execute()) as { back: number; freed: number; shortest: number | null }[];
      return { back: rows[0]!.back > 0, freed: rows[0]!.freed, shortest: Math.min(leaseS, rows[0]!.shortest ?? leaseS) };
    },
    /**
     * Nodes silent past their own lease (DEAD), or the one given, are dead: their open messages go back to
     * their queues, and their counter rows are folded into node 0's (minus those opens), so rows do
     * not pile up. One statement (data-modifying CTEs), so it commits whole on its own: the batches
     * sent on the same connection meanwhile must not land inside a transaction of ours, and a
     * reaper killed half-way must not leave the node's row deleted and its messages still owned by
     * it (no reaper would ever find them). Messages of owners with no row go back too (orphaned).
     * Returns how many messages came back.
     */
    reap: (sql: SQL, leaseS: number, only: number | null = null, witnessedS = leaseS) => reap(sql, leaseS, only, witnessedS),
    /** A clean stop: this node reaps itself (what it still holds open goes back: no node is left to). */
    leave: (sql: SQL, node: number) => reap(sql, 0, node, 0),
  };
}

export type Statements = ReturnType<typeof statements>;
