/**
 * `mcq dump --store <url> [--queue <q>]`: the dump of dump.ts (the same lines, format.ts) out of
 * the Postgres store, while its nodes run. Everything is read in one REPEATABLE READ, READ ONLY
 * transaction: one snapshot, so each message is in the dump exactly once (in mcq_messages or in
 * mcq_delayed, never both nor neither) and the counters are those of that moment. Rows come
 * through cursors, without their bodies; bodies are then fetched by id, about FETCH_BYTES at a
 * time (runsByBytes), and go out through dump.ts's 64 KB buffer: memory does not grow with the
 * data (a single body larger than FETCH_BYTES is held alone). Postgres sorts each queue's messages (due, then id), spilling to disk, not here.
 *
 * As on SQLite: a queue's counters are its rows of mcq_counters summed over the nodes; open
 * messages are dumped as waiting ones (with their delivery counts), as a node that died would
 * give them back; queues and tokens come in byte order of their names.
 */
import { randomUUID } from "node:crypto";
import { ToolError } from "./datadir";
import { FEATURE_FIELDS, FORMAT } from "./format";
import { collectEvery, lineWriter, progress } from "./output";
import { openToolStore, type ToolStore } from "./postgres-tool";

/** Bytes of bodies fetched at a time (a body larger than this comes alone): what the dump holds of them, about. */
const FETCH_BYTES = 4 << 20;
/** Rows per FETCH of a cursor: they carry no body (its length only), so they are small whatever the bodies are. */
const FETCH_ROWS = 1000;

/** Every row of `cursor` (declared), FETCH_ROWS at a time. */
async function* rows<T extends object>(pg: ToolStore, cursor: string): AsyncGenerator<T[]> {
  for (;;) {
    const got = await pg.ask<T>(`FETCH ${FETCH_ROWS} FROM ${cursor}`);
    if (got.length === 0) return;
    yield got;
  }
}

/**
 * Cuts rows whose bodies are `lens` bytes long, in their order, into runs of at most `budget`
 * bytes of bodies (a longer body is a run of its own); returns where each run ends. Bun holds a
 * whole result (bytea as hex, twice its size): sizing a fetch by what it will bring, before
 * bringing it, is what bounds the dump's memory.
 */
export function runsByBytes(lens: number[], budget: number): number[] {
  const ends: number[] = [];
  let [start, sum] = [0, 0];
  lens.forEach((n, i) => {
    if (i > start && sum + n > budget) {
      ends.push(i);
      [start, sum] = [i, 0];
    }
    sum += n;
  });
  if (lens.length > start) ends.push(lens.length);
  return ends;
}

/** The bodies of `run` (by table and id, in the transaction's snapshot), in the run's order. */
async function bodies(pg: ToolStore, run: Message[]): Promise<Uint8Array[]> {
  const ids = (delayed: boolean) => run.filter((m) => m.delayed === delayed).map((m) => m.id);
  const got = await pg.ask<{ delayed: boolean; id: number; body: Uint8Array }>(
    `SELECT false AS delayed, id::float8 AS id, body FROM ${pg.schema}.mcq_messages WHERE id = ANY($1::int8[])
     UNION ALL SELECT true, id::float8, body FROM ${pg.schema}.mcq_delayed WHERE id = ANY($2::int8[])`,
    [ids(false), ids(true)],
  );
  const by = new Map(got.map((r) => [`${r.delayed} ${r.id}`, r.body]));
  return run.map((m) => {
    const body = by.get(`${m.delayed} ${m.id}`);
    if (body === undefined) throw new ToolError(`mcq dump: message ${m.id} of ${m.queue} is gone from its snapshot (a bug)`);
    return body;
  });
}

type Queue = { name: string; total: number; fetched: number } & Record<string, number>;
type Message = { queue: string; id: number; flags: number; created: number; expires: number; deliveries: number; due: number; delayed: boolean; len: number };

export async function dumpPostgres(url: string, only: string | null, version: string, fd = 1): Promise<number> {
  const pg = await openToolStore("dump", url, false);
  const S = pg.schema;
  const where = only === null ? "" : "WHERE queue = $1";
  const params = only === null ? [] : [only];
  try {
    await pg.begin("ISOLATION LEVEL REPEATABLE READ READ ONLY");
    // A queue is one with counter rows or with messages: a message is dumped even if its queue lost
    // its counter rows (a `delete` racing a writer can leave that), under a queue line of zeros.
    const zeros = ["total", "fetched", ...FEATURE_FIELDS].map((c) => `0 AS ${c}`).join(", ");
    const queues = await pg.ask<Queue>(
      `SELECT queue AS name, sum(total)::float8 AS total, sum(fetched)::float8 AS fetched,
         ${FEATURE_FIELDS.map((f) => `sum(${f})::float8 AS ${f}`).join(", ")}
       FROM (SELECT queue, total, fetched, ${FEATURE_FIELDS.join(", ")} FROM ${S}.mcq_counters
         UNION ALL SELECT DISTINCT queue, ${zeros} FROM ${S}.mcq_messages
         UNION ALL SELECT DISTINCT queue, ${zeros} FROM ${S}.mcq_delayed) x
       ${where} GROUP BY queue ORDER BY queue COLLATE "C"`,
      params,
    );
    if (only !== null && queues.length === 0) throw new ToolError(`mcq dump: no queue ${only} in ${pg.safe}`);
    // The highest id either sequence gave (read outside the snapshot: at least as high as any in it).
    const called = (seq: string) => `(SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM ${S}.${seq})`;
    const [{ lastId }] = await pg.ask<{ lastId: number }>(
      `SELECT greatest(${called("mcq_messages_id_seq")}, ${called("mcq_delayed_id_seq")},
         (SELECT max(id) FROM ${S}.mcq_messages), (SELECT max(id) FROM ${S}.mcq_delayed), 0)::float8 AS "lastId"`,
    ) as [{ lastId: number }];
    const out = lineWriter(fd);
    const shown = progress("dumped");
    out.line(JSON.stringify({ type: "dump", format: FORMAT, id: randomUUID(), created: Date.now(), mcq: version, lastId }));
    for (const { name, total, fetched, ...counts } of queues) {
      const features = Object.fromEntries(FEATURE_FIELDS.map((f) => [f, counts[f]!]).filter(([, n]) => n !== 0));
      out.line(JSON.stringify({ type: "queue", name, total, fetched, ...features }));
    }
    // Waiting (and open) messages in queue order, then the delayed ones by due time (due is 0 for the
    // others); the cursor gives each body's length (read from its header, not the body), bodies() the bodies.
    const columns = "queue, id, flags, created, expires, deliveries";
    await pg.ask(
      `DECLARE m NO SCROLL CURSOR FOR
       SELECT queue, id::float8 AS id, flags::float8 AS flags, created::float8 AS created, expires::float8 AS expires,
         deliveries, due::float8 AS due, delayed, octet_length(body) AS len
       FROM (SELECT ${columns}, 0::int8 AS due, false AS delayed, body FROM ${S}.mcq_messages
         UNION ALL SELECT ${columns}, due, true, body FROM ${S}.mcq_delayed) x
       ${where}
       ORDER BY queue COLLATE "C", due, id`,
      params,
    );
    let count = 0;
    for await (const batch of rows<Message>(pg, "m")) {
      let start = 0;
      for (const end of runsByBytes(batch.map((m) => m.len), FETCH_BYTES)) {
        const run = batch.slice(start, (start = end));
        const got = await bodies(pg, run);
        run.forEach(({ queue, id, flags, created, expires, deliveries, due }, i) => {
          out.line(JSON.stringify({
            type: "message", queue, id, flags, created, expires, body: Buffer.from(got[i]!).toString("base64"),
            ...(due > 0 ? { due } : {}), ...(deliveries > 0 ? { deliveries } : {}),
          }));
          shown.count(++count);
          collectEvery(count);
        });
      }
    }
    await pg.ask(`DECLARE t NO SCROLL CURSOR FOR SELECT queue, token, until::float8 AS until FROM ${S}.mcq_dedup ${where}
      ORDER BY queue COLLATE "C", token COLLATE "C"`, params);
    for await (const batch of rows<{ queue: string; token: string; until: number }>(pg, "t")) {
      for (const t of batch) out.line(JSON.stringify({ type: "token", queue: t.queue, token: t.token, until: t.until }));
    }
    await pg.commit();
    out.line(JSON.stringify({ type: "end", queues: queues.length, messages: count }));
    out.flush();
    shown.done();
    return count;
  } finally {
    await pg.close();
  }
}
