/**
 * The Postgres store's schema, created and migrated by mcq itself.
 *
 *   mcq_version   one row: the schema version (SCHEMA_VERSION). A node refuses a newer one.
 *   mcq_messages  every stored message; `owner` is the node holding it open (NULL: in its queue).
 *                 Ids come from one sequence, in the order Postgres inserts them: FIFO is by id.
 *   mcq_counters  per (queue, node) counter deltas, summed when read, so that nodes never queue
 *                 up on one hot row; a queue exists while it has a row here.
 *   mcq_nodes     live nodes and their heartbeats; a node silent past the lease time is dead,
 *                 and any other node returns its open messages to their queues.
 *   (version 2, the queue features: postgres-features.ts)
 *   mcq_delayed   messages not yet due, by due time then arrival (Postgres's clock); each moves to
 *                 mcq_messages under a new id once due.
 *   mcq_dedup     the tokens of idempotent sets, each with the end of its window.
 *   mcq_messages.deliveries  how often a message was opened (dead letters).
 *   mcq_counters  gains delayed, deduplicated, dead_lettered and discarded.
 *   (version 3)
 *   mcq_counters  gains dead_letter_skipped and fanout_refused (counted by the server, kept per node).
 *   (version 4)
 *   mcq_settled   batches whose COMMIT landed unanswered and whose takes were given back, by
 *                 server, timeline and xid, kept a week: a give-back is never done twice.
 *   (version 5)
 *   mcq_flushed   per queue ('' for all), the last message id handed out when it was last flushed
 *                 or deleted: a give-back re-inserts no message at or below it.
 *   (version 6)
 *   mcq_nodes.lease_s     each node's own --node-timeout: it is dead when silent past its own lease
 *                 (NULL, a node of version 5 or older: past the reaper's).
 *   mcq_version.store_id  the schema's identity, a random uuid written once: the batches of unknown
 *                 outcome a data directory keeps are matched to their store by it
 *                 (postgres-unknown-file.ts), not only by names a copied cluster shares.
 *
 * Changing the schema: bump SCHEMA_VERSION and add a step to MIGRATIONS that brings version N-1
 * to N. Within one major version a step only adds (columns with defaults, tables, indexes), so
 * that older nodes keep working during a rolling upgrade.
 */
import type { SQL } from "bun";
import { StoreError } from "./store";

export const SCHEMA_VERSION = 6;

/** MIGRATIONS[n] brings the schema from version n to n + 1. */
const MIGRATIONS: string[] = [
  `CREATE TABLE mcq_messages (
     id bigserial PRIMARY KEY,
     queue text NOT NULL,
     flags bigint NOT NULL,
     created bigint NOT NULL,
     expires bigint NOT NULL,
     owner integer,
     body bytea NOT NULL);
   CREATE INDEX mcq_messages_head ON mcq_messages (queue, id) WHERE owner IS NULL;
   CREATE INDEX mcq_messages_expiry ON mcq_messages (expires) WHERE expires > 0;
   CREATE INDEX mcq_messages_owner ON mcq_messages (owner) WHERE owner IS NOT NULL;
   CREATE TABLE mcq_counters (
     queue text NOT NULL,
     node integer NOT NULL,
     total bigint NOT NULL DEFAULT 0,
     fetched bigint NOT NULL DEFAULT 0,
     items bigint NOT NULL DEFAULT 0,
     bytes bigint NOT NULL DEFAULT 0,
     open bigint NOT NULL DEFAULT 0,
     expired bigint NOT NULL DEFAULT 0,
     PRIMARY KEY (queue, node));
   CREATE TABLE mcq_nodes (
     id serial PRIMARY KEY,
     started timestamptz NOT NULL DEFAULT now(),
     heartbeat timestamptz NOT NULL DEFAULT now());`,
  // 1 -> 2: the queue features (issue 12). Only additions: a node of version 1 keeps working
  // beside (it neither delays nor counts deliveries, and ignores the new counters).
  `ALTER TABLE mcq_messages ADD COLUMN deliveries integer NOT NULL DEFAULT 0;
   ALTER TABLE mcq_counters ADD COLUMN delayed bigint NOT NULL DEFAULT 0,
     ADD COLUMN deduplicated bigint NOT NULL DEFAULT 0,
     ADD COLUMN dead_lettered bigint NOT NULL DEFAULT 0,
     ADD COLUMN discarded bigint NOT NULL DEFAULT 0;
   CREATE TABLE mcq_delayed (
     id bigserial PRIMARY KEY,
     queue text NOT NULL,
     flags bigint NOT NULL,
     created bigint NOT NULL,
     expires bigint NOT NULL,
     due bigint NOT NULL,
     deliveries integer NOT NULL DEFAULT 0,
     body bytea NOT NULL);
   CREATE INDEX mcq_delayed_due ON mcq_delayed (due, id);
   CREATE INDEX mcq_delayed_queue ON mcq_delayed (queue);
   CREATE TABLE mcq_dedup (
     queue text NOT NULL,
     token text NOT NULL,
     until bigint NOT NULL,
     PRIMARY KEY (queue, token));
   CREATE INDEX mcq_dedup_until ON mcq_dedup (until);`,
  // 2 -> 3: the two feature counters that were per node and not kept. Only additions: a node of
  // version 2 keeps working beside (docs/design.md says what it does not count).
  `ALTER TABLE mcq_counters ADD COLUMN dead_letter_skipped bigint NOT NULL DEFAULT 0,
     ADD COLUMN fanout_refused bigint NOT NULL DEFAULT 0;`,
  // 3 -> 4: batches whose takes were given back after their COMMIT landed unanswered
  // (postgres-unknown.ts). Only an addition: an older node never reads it.
  `CREATE TABLE IF NOT EXISTS mcq_settled (key text PRIMARY KEY, at timestamptz NOT NULL DEFAULT now());`,
  // 4 -> 5: flush marks (postgres-sql.ts giveBack). Only an addition: an older node's flush
  // leaves no mark (docs/design.md "An outcome that stays unknown").
  `CREATE TABLE IF NOT EXISTS mcq_flushed (queue text PRIMARY KEY, upto bigint NOT NULL);`,
  // 5 -> 6: each node's lease (review 10a M5) and the schema's identity (review 10b R4). Only
  // additions: a node of version 5 registers without a lease (judged by the reaper's own) and never
  // reads the identity. A volatile default gives the one row of mcq_version its uuid, once.
  `ALTER TABLE mcq_nodes ADD COLUMN IF NOT EXISTS lease_s integer;
   ALTER TABLE mcq_version ADD COLUMN IF NOT EXISTS store_id uuid NOT NULL DEFAULT gen_random_uuid();`,
];

/** How many times a migration waits `lockTimeoutMs` for a table's lock before the start fails. */
const LOCK_TRIES = 3;

/**
 * Creates the schema or brings it up to date, under an advisory lock so that nodes starting
 * together migrate once. Returns the schema's identity (mcq_version.store_id). Throws StoreError
 * if the schema is newer than this mcq knows.
 *
 * A step that alters a table (1 -> 2: mcq_messages; 5 -> 6: mcq_nodes, which heartbeats update) needs its ACCESS EXCLUSIVE lock. Behind a
 * holder of a lock on it (a REINDEX CONCURRENTLY of the index upkeep, a long transaction, a
 * dump), the request would wait for ever, and every node's statements on the table would queue
 * behind it meanwhile (review 8 R4). So each wait is bounded by lock_timeout (`lockTimeoutMs`,
 * the store's timeout): the transaction is undone, letting the others through, and tried again;
 * after LOCK_TRIES the start fails, saying why.
 */
export async function migrate(sql: SQL, schema: string, lockTimeoutMs = 5000): Promise<string> {
  // mcq writes the schema's name into its statements unquoted: a keyword Postgres reserves
  // (`grant`, `user`, `order`) would fail every one of them with a syntax error.
  const [reserved] = await sql.unsafe(`SELECT 1 FROM pg_get_keywords() WHERE word = $1 AND catcode IN ('R', 'T')`, [schema]);
  if (reserved !== undefined) throw new StoreError(`the schema name ${schema} is a keyword Postgres reserves: choose another (?schema=<name>)`);
  await sql.unsafe(`CREATE SCHEMA IF NOT EXISTS ${schema}`).catch((e: Error) => {
    // Two nodes creating it at once: one of them loses the race, and the schema exists.
    if (!/already exists|duplicate key/.test(e.message)) throw e;
  });
  await sql.unsafe(`SET search_path TO ${schema}`);
  for (let tries = 1; ; tries++) {
    const found = await migrateOnce(sql, schema, lockTimeoutMs).catch((e: unknown) => {
      if ((e as { errno?: unknown }).errno !== "55P03") throw e; // lock_not_available
      return null;
    });
    if (found !== null) return found.storeId;
    if (tries === LOCK_TRIES) {
      throw new StoreError(
        `cannot migrate the Postgres schema ${schema} to version ${SCHEMA_VERSION}: a lock on its tables was not granted within ` +
          `${lockTimeoutMs} ms, ${LOCK_TRIES} times (another session holds one: a REINDEX, a long transaction, a dump; see pg_locks); ` +
          "nothing was changed: start mcq again once it has ended",
      );
    }
  }
}

/** One try of migrate(), in one transaction; returns the version it found and the schema's identity. */
async function migrateOnce(sql: SQL, schema: string, lockTimeoutMs: number): Promise<{ version: number; storeId: string }> {
  await sql.unsafe("BEGIN");
  try {
    await sql.unsafe("SELECT pg_advisory_xact_lock(hashtext($1))", [`mcq:${schema}`]);
    // After the advisory lock: a node waiting for another's migration waits for it whole.
    await sql.unsafe(`SET LOCAL lock_timeout = ${Math.max(1, Math.round(lockTimeoutMs))}`);
    await sql.unsafe("CREATE TABLE IF NOT EXISTS mcq_version (version integer NOT NULL)");
    const rows = await sql.unsafe("SELECT version FROM mcq_version");
    const version = rows.length === 0 ? 0 : Number(rows[0].version);
    if (version > SCHEMA_VERSION) {
      throw new StoreError(`the Postgres schema ${schema} is version ${version}, newer than this mcq knows (${SCHEMA_VERSION}): upgrade mcq`);
    }
    for (let v = version; v < SCHEMA_VERSION; v++) await sql.unsafe(MIGRATIONS[v]!).simple();
    if (rows.length === 0) await sql.unsafe("INSERT INTO mcq_version VALUES ($1)", [SCHEMA_VERSION]);
    else if (version < SCHEMA_VERSION) await sql.unsafe("UPDATE mcq_version SET version = $1", [SCHEMA_VERSION]);
    const [{ id }] = await sql.unsafe("SELECT store_id::text AS id FROM mcq_version");
    await sql.unsafe("COMMIT");
    return { version, storeId: id as string };
  } catch (e) {
    await sql.unsafe("ROLLBACK").catch(() => {});
    throw e;
  }
}
