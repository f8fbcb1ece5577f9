/**
 * `mcq dump --store <url> [--queue <q>]`: the dump of dump.ts (the same lines, format.ts) out of
 * the Postgres store, while its nodes run. Everything is read in one REPEATABLE READ, READ ONLY
 * transaction: one snapshot, so each message is in the dump exactly once (in mcq_messages or in
 * mcq_delayed, never both nor neither) and the counters are those of that moment. Rows come
 * through cursors, a few MB per FETCH, and go out through dump.ts's 64 KB buffer: memory does not
 * grow with the data. Postgres sorts each queue's messages (due, then id), spilling to disk, not here.
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

/** Bytes of bodies one FETCH brings, about: the number of rows follows the bodies' size. */
const FETCH_BYTES = 4 << 20;
const MAX_FETCH_ROWS = 1000;

/** Every row of `cursor` (declared), one FETCH at a time, each as many rows as make about FETCH_BYTES. */
async function* rows<T extends object>(pg: ToolStore, cursor: string): AsyncGenerator<T> {
  let n = 100;
  for (;;) {
    const got = await pg.ask<T>(`FETCH ${n} FROM ${cursor}`);
    if (got.length === 0) return;
    let bytes = 0;
    for (const r of got) bytes += ((r as { body?: Uint8Array }).body?.length ?? 0) + 100;
    n = Math.max(1, Math.min(MAX_FETCH_ROWS, Math.floor((FETCH_BYTES * got.length) / bytes)));
    yield* got;
  }
}

type Queue = { name: string; total: number; fetched: number } & Record<string, number>;
type Message = { queue: string; id: number; flags: number; created: number; expires: number; deliveries: number; due: number; body: Uint8Array };

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
    // Waiting (and open) messages in queue order, then the delayed ones by due time (due is 0 for the others).
    const columns = "queue, id, flags, created, expires, deliveries";
    await pg.ask(
      `DECLARE m NO SCROLL CURSOR FOR
       SELECT queue, id::float8 AS id, flags::float8 AS flags, created::float8 AS created, expires::float8 AS expires,
         deliveries, due::float8 AS due, body
       FROM (SELECT ${columns}, 0::int8 AS due, body FROM ${S}.mcq_messages UNION ALL SELECT ${columns}, due, body FROM ${S}.mcq_delayed) x
       ${where}
       ORDER BY queue COLLATE "C", due, id`,
      params,
    );
    let count = 0;
    for await (const row of rows<Message>(pg, "m")) {
      const { queue, id, flags, created, expires, deliveries, due } = row;
      out.line(JSON.stringify({
        type: "message", queue, id, flags, created, expires, body: Buffer.from(row.body).toString("base64"),
        ...(due > 0 ? { due } : {}), ...(deliveries > 0 ? { deliveries } : {}),
      }));
      shown.count(++count);
      collectEvery(count);
    }
    await pg.ask(`DECLARE t NO SCROLL CURSOR FOR SELECT queue, token, until::float8 AS until FROM ${S}.mcq_dedup ${where}
      ORDER BY queue COLLATE "C", token COLLATE "C"`, params);
    for await (const t of rows<{ queue: string; token: string; until: number }>(pg, "t")) {
      out.line(JSON.stringify({ type: "token", queue: t.queue, token: t.token, until: t.until }));
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
