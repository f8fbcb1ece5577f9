/**
 * `mcq load --store <url> [--append] <file|->`: a dump (format.ts) into the Postgres store, beside
 * running nodes, with the semantics of load.ts on SQLite:
 * - One transaction: a bad line, a dump cut short (no end line) or a failure loads nothing.
 * - The dump's id is recorded in mcq_loads (made by the first load, as SQLite's `loads`), in the
 *   same transaction; a dump loaded before is refused unless --append. One load at a time into a
 *   store (an advisory lock of its own): a second one meanwhile is refused at once, loading nothing.
 * - Messages go after those already queued, in the order of the file: each gets the next id of
 *   the store's sequence (FIFO is by id), so the sequence stays ahead of every loaded id, and the
 *   dump's ids are not kept (a node may be storing beside the load). The ids are taken just before
 *   the COMMIT, a statement per staged chunk (place()): a message a node stores while the load
 *   reads its input goes before the loaded ones, not among them (only a set running while they
 *   are placed may take an id among theirs: the sequence is shared, not locked). A delayed
 *   message goes to mcq_delayed with its due time, and moves to its queue once due, as any other.
 * - The dumped counters, and the loaded messages' items, bytes and delayed, are added to a counter
 *   row of the load's own (node LOAD_NODE, no node's): the nodes' sums include it, and no node
 *   writes it. Tokens keep the later end of their window.
 * - At commit, NOTIFY wakes the gets waiting on any node for the loaded queues, and ` due <t>`
 *   arms the nodes' delay timers (postgres-features.ts), as a node's own commit does.
 * Rows are sent in chunks of about CHUNK_BYTES (bodies joined into one bytea, as the store sends
 * them) to a temporary table of the transaction, so the load's memory does not grow with the dump
 * (Postgres's does not either: a temporary table spills to disk).
 */
import { ToolError } from "./datadir";
import { FEATURE_FIELDS, type MessageLine } from "./format";
import { readDump, type Sink } from "./load-lines";
import type { LoadResult } from "./load";
import { openToolStore, type ToolStore } from "./postgres-tool";

/** The counter rows of loads: node ids are 1 and up, 0 holds the counters of reaped nodes (postgres-sql.ts reap). */
const LOAD_NODE = -1;
const CHUNK_BYTES = 4 << 20;
const CHUNK_ROWS = 2000;

/** Per queue: what the load adds to its counters. */
interface Added {
  total: number;
  fetched: number;
  items: number;
  bytes: number;
  delayed: number;
  features: number[];
}

/** Rows waiting to be sent: columns, and the bodies joined. */
function chunk() {
  return { queue: [] as string[], flags: [] as number[], created: [] as number[], expires: [] as number[], deliveries: [] as number[],
    due: [] as number[], len: [] as number[], bodies: [] as Buffer[], bytes: 0 };
}
type Chunk = ReturnType<typeof chunk>;
const full = (c: Chunk) => c.bytes >= CHUNK_BYTES || c.queue.length >= CHUNK_ROWS;

/** The load's rows, in the file's order (n), until they all go into the store's tables at once (place()). */
const STAGED = "pg_temp.mcq_load_rows";
const STAGE = `CREATE TEMP TABLE mcq_load_rows (n int8 PRIMARY KEY, queue text NOT NULL, flags int8 NOT NULL, created int8 NOT NULL,
  expires int8 NOT NULL, deliveries int NOT NULL, due int8 NOT NULL, body bytea NOT NULL) ON COMMIT DROP`;

/** Stages a chunk (its rows numbered from `first`, in order). */
async function stage(pg: ToolStore, c: Chunk, first: number): Promise<void> {
  if (c.queue.length === 0) return;
  const off: number[] = [];
  let at = 1;
  for (const n of c.len) {
    off.push(at);
    at += n;
  }
  await pg.ask(
    `INSERT INTO ${STAGED} (n, queue, flags, created, expires, deliveries, due, body)
     SELECT $10::int8 + i, queue, flags, created, expires, deliveries, due, substring($8::bytea FROM off FOR len)
     FROM unnest($1::text[], $2::int8[], $3::int8[], $4::int8[], $5::int[], $6::int8[], $7::int[], $9::int[])
       WITH ORDINALITY AS r(queue, flags, created, expires, deliveries, due, off, len, i)`,
    [c.queue, c.flags, c.created, c.expires, c.deliveries, c.due, off, Buffer.concat(c.bodies, c.bytes), c.len, first],
  );
}

/**
 * Moves the staged rows into mcq_messages and (due) mcq_delayed in the file's order: their ids are
 * taken from the sequences only now, just before the COMMIT, so a message a node stores while the
 * load reads its input goes before all of them, not among them. Two statements per staged chunk
 * (`starts`: the `first` each chunk was staged from; `end`: the rows staged), by the index on n: one statement for
 * the whole dump ran past the tool's bound on a round trip (60 s: some 3 GB of small messages) and
 * sorted every staged body (review 9).
 */
async function place(pg: ToolStore, starts: number[], end: number): Promise<void> {
  const S = pg.schema;
  const columns = "queue, flags, created, expires, deliveries";
  const rows = `FROM ${STAGED} WHERE n > $1 AND n <= $2`; // a chunk staged from `first` numbers its rows first + 1 on (stage())
  await pg.ask(`ANALYZE ${STAGED}`); // a temporary table has no statistics: without them, no index scan
  for (const [i, from] of starts.entries()) {
    const range = [from, starts[i + 1] ?? end];
    await pg.ask(`INSERT INTO ${S}.mcq_messages (${columns}, body) SELECT ${columns}, body ${rows} AND due = 0 ORDER BY n`, range);
    await pg.ask(`INSERT INTO ${S}.mcq_delayed (${columns}, due, body) SELECT ${columns}, due, body ${rows} AND due > 0 ORDER BY n`, range);
  }
}

/** Adds a message line (its body decoded) to a chunk. */
function push(c: Chunk, line: MessageLine, body: Buffer): void {
  c.queue.push(line.queue);
  c.flags.push(line.flags);
  c.created.push(line.created);
  c.expires.push(line.expires);
  c.deliveries.push(line.deliveries ?? 0);
  c.due.push(line.due ?? 0);
  c.len.push(body.length);
  c.bodies.push(body);
  c.bytes += body.length;
}

/** Records the dump's id as loaded, in the load's transaction; a dump loaded before is refused unless `append`. */
async function claimDump(pg: ToolStore, id: string, append: boolean): Promise<void> {
  const mine = await pg.ask(
    `INSERT INTO ${pg.schema}.mcq_loads (dump_id, loaded_at, messages) VALUES ($1, $2, 0)
     ON CONFLICT (dump_id) DO ${append ? "UPDATE SET loaded_at = excluded.loaded_at" : "NOTHING"} RETURNING dump_id`,
    [id, Date.now()],
  );
  if (mine.length > 0) return;
  const [row] = await pg.ask<{ at: number }>(`SELECT loaded_at::float8 AS at FROM ${pg.schema}.mcq_loads WHERE dump_id = $1`, [id]);
  throw new ToolError(`mcq load: dump ${id} was loaded into ${pg.safe} on ${new Date(row!.at).toISOString()}; ` +
    "nothing loaded (--append loads it again)");
}

/** Tokens (one row per queue and token), each keeping the later end of its window. */
async function addTokens(pg: ToolStore, t: { queue: string; token: string; until: number }[]): Promise<void> {
  if (t.length === 0) return;
  await pg.ask(
    `INSERT INTO ${pg.schema}.mcq_dedup AS d (queue, token, until) SELECT * FROM unnest($1::text[], $2::text[], $3::int8[])
     ON CONFLICT (queue, token) DO UPDATE SET until = greatest(d.until, excluded.until)`,
    [t.map((x) => x.queue), t.map((x) => x.token), t.map((x) => x.until)],
  );
}

/** Adds every queue's counters to the load's own row (LOAD_NODE); a queue exists once it has a row. */
async function addCounters(pg: ToolStore, added: Map<string, Added>): Promise<void> {
  if (added.size === 0) return;
  const q = [...added.entries()];
  const cols = ["total", "fetched", "items", "bytes", "delayed", ...FEATURE_FIELDS];
  const values = (a: Added) => [a.total, a.fetched, a.items, a.bytes, a.delayed, ...a.features];
  await pg.ask(
    `INSERT INTO ${pg.schema}.mcq_counters AS c (node, queue, ${cols.join(", ")})
     SELECT ${LOAD_NODE}, * FROM unnest($1::text[], ${cols.map((_, i) => `$${i + 2}::int8[]`).join(", ")})
     ON CONFLICT (queue, node) DO UPDATE SET ${cols.map((c) => `${c} = c.${c} + excluded.${c}`).join(", ")}`,
    [q.map(([name]) => name), ...cols.map((_, i) => q.map(([, a]) => values(a)[i]!))],
  );
}

/** The Postgres side of a load (load-lines.ts checks the lines), inside the open transaction. */
function postgresSink(pg: ToolStore, append: boolean) {
  const S = pg.schema;
  const added = new Map<string, Added>();
  const tokens = new Map<string, { queue: string; token: string; until: number }>();
  let rows = chunk();
  let staged = 0;
  /** The first row of each staged chunk (place()). */
  const starts: number[] = [];
  let claim: string | null = null;
  /** The earliest due time loaded, for the nodes' timers. */
  let due = Infinity;
  const queue = (name: string) => {
    let a = added.get(name);
    if (a === undefined) added.set(name, (a = { total: 0, fetched: 0, items: 0, bytes: 0, delayed: 0, features: FEATURE_FIELDS.map(() => 0) }));
    return a;
  };

  async function send(all: boolean): Promise<void> {
    if (claim !== null) await claimDump(pg, claim, append);
    claim = null;
    if (all || full(rows)) {
      if (rows.queue.length > 0) starts.push(staged);
      await stage(pg, rows, staged);
      staged += rows.queue.length;
      rows = chunk();
    }
    if (all || tokens.size >= CHUNK_ROWS) {
      await addTokens(pg, [...tokens.values()]);
      tokens.clear();
    }
  }

  const sink: Sink = {
    header(line) {
      claim = line.id;
    },
    queue(line) {
      const a = queue(line.name);
      a.total += line.total;
      a.fetched += line.fetched;
      FEATURE_FIELDS.forEach((f, i) => (a.features[i]! += line[f] ?? 0));
    },
    token(line) {
      const key = `${line.queue} ${line.token}`; // a name has no space
      const before = tokens.get(key);
      if (before === undefined || before.until < line.until) tokens.set(key, { queue: line.queue, token: line.token, until: line.until });
    },
    message(line: MessageLine) {
      const body = Buffer.from(line.body, "base64");
      const delayed = (line.due ?? 0) > 0;
      push(rows, line, body);
      const a = queue(line.queue); // lines written by hand (a migration) may leave out the queue lines
      a.items++;
      a.bytes += body.length;
      if (delayed) {
        a.delayed++;
        due = Math.min(due, line.due!);
      }
    },
    drain: () => (claim !== null || full(rows) || tokens.size >= CHUNK_ROWS ? send(false) : null),
  };

  /** After the last line: what is left, the counters, the dump's id as loaded, the notices. */
  async function finish(id: string | null, messages: number): Promise<void> {
    await send(true);
    await place(pg, starts, staged);
    await addCounters(pg, added);
    if (id !== null) await pg.ask(`UPDATE ${S}.mcq_loads SET messages = $2 WHERE dump_id = $1`, [id, messages]);
    const woken = [...added].filter(([, a]) => a.items > a.delayed).map(([name]) => name);
    const channel = `mcq_${S}`;
    if (woken.length > 0) await pg.ask("SELECT pg_notify($1, q) FROM unnest($2::text[]) AS q", [channel, woken]);
    if (due !== Infinity) await pg.ask("SELECT pg_notify($1, $2)", [channel, ` due ${due}`]);
  }

  return { sink, finish };
}

/** The advisory lock of loads into a store (nodes never take it). */
const lockName = (pg: ToolStore) => `mcq-load:${pg.schema}`;

/**
 * Which backend holds the load lock, for the message of a load refused: a load whose client
 * stalls (paused, cut off) holds it until TCP keepalive ends its connection, hours by default.
 */
async function holder(pg: ToolStore): Promise<string> {
  const [row] = await pg.ask<{ pid: number }>(
    `SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1
       AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
       AND ((classid::int8 << 32) | objid::int8) = hashtext($1)::int8`, // a bigint key's halves
    [lockName(pg)],
  );
  return row === undefined ? "" : ` (backend pid ${row.pid}: SELECT pg_terminate_backend(${row.pid}) ends it, loading nothing)`;
}

export async function loadPostgres(url: string, input: AsyncIterable<Uint8Array>, append: boolean): Promise<LoadResult> {
  const pg = await openToolStore("load", url, true);
  const notes: string[] = [];
  try {
    await pg.begin();
    try {
      // One load at a time into a store (nodes never take this lock): the first makes mcq_loads.
      const [{ mine }] = await pg.ask<{ mine: boolean }>("SELECT pg_try_advisory_xact_lock(hashtext($1)) AS mine", [lockName(pg)]) as [{ mine: boolean }];
      if (!mine) throw new ToolError(`mcq load: another mcq load into ${pg.safe} is running${await holder(pg)}; nothing loaded`);
      await pg.ask(`CREATE TABLE IF NOT EXISTS ${pg.schema}.mcq_loads (dump_id text PRIMARY KEY, loaded_at int8 NOT NULL, messages int8 NOT NULL)`);
      await pg.ask(STAGE);
      const run = postgresSink(pg, append);
      const read = await readDump(input, run.sink, notes);
      await run.finish(read.header?.id ?? null, read.count);
      await pg.commit(read.header === null ? "; this dump has no id: look for its messages before loading it again"
        : "; loading the same dump again tells (it is refused if it landed)");
      return { messages: read.count, notes };
    } catch (e) {
      await pg.ask("ROLLBACK").catch(() => {}); // a connection given up rolls back as it closes
      throw e;
    }
  } finally {
    await pg.close();
  }
}
