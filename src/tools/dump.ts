/**
 * `mcq dump -H <dir> [--queue <q>]`: writes the queues as a dump (format.ts) on stdout, which
 * `mcq load` reads back exactly. Messages are read one row at a time and written through a
 * 64 KB buffer, so memory does not grow with the data. Open messages are dumped as waiting
 * ones: a restart would put them back too.
 */
import { randomUUID } from "node:crypto";
import { ToolError, openDataDir } from "./datadir";
import { FEATURE_FIELDS, FORMAT } from "./format";
import { collectEvery, lineWriter, progress } from "./output";

export function dump(home: string, only: string | null, version: string, fd = 1): number {
  const db = openDataDir("dump", home, false);
  try {
    type Queue = [number, string, number, number, ...number[]];
    const columns = `id, name, total, fetched, ${FEATURE_FIELDS.join(", ")}`; // the columns are named as the fields
    const queues = only === null
      ? db.query(`SELECT ${columns} FROM queues ORDER BY name`).values() as Queue[]
      : db.query(`SELECT ${columns} FROM queues WHERE name = ?`).values(only) as Queue[];
    if (only !== null && queues.length === 0) throw new ToolError(`mcq dump: no queue ${only} in ${home}`);
    const out = lineWriter(fd);
    const shown = progress("dumped");
    const lastId = db.query("SELECT max(coalesce((SELECT max(last_id) FROM queues), 0), coalesce((SELECT max(id) FROM messages), 0), " +
      "coalesce((SELECT max(id) FROM delayed), 0))").values()[0]![0] as number;
    out.line(JSON.stringify({ type: "dump", format: FORMAT, id: randomUUID(), created: Date.now(), mcq: version, lastId }));
    for (const [, name, total, fetched, ...counts] of queues) {
      const features = Object.fromEntries(FEATURE_FIELDS.map((f, i) => [f, counts[i]!]).filter(([, n]) => n !== 0));
      out.line(JSON.stringify({ type: "queue", name, total, fetched, ...features }));
    }
    // Waiting messages in queue order, then the delayed ones (due is 0 for the others).
    const messages = db.query(
      "SELECT id, flags, created, expires, deliveries, 0 AS due, body FROM messages WHERE qid = ?1 " +
        "UNION ALL SELECT * FROM (SELECT id, flags, created, expires, deliveries, due, body FROM delayed WHERE qid = ?1 ORDER BY due, id) " +
        "ORDER BY due, id",
    );
    let count = 0;
    for (const [qid, name] of queues) {
      type Row = { id: number; flags: number; created: number; expires: number; deliveries: number; due: number; body: Uint8Array };
      for (const row of messages.iterate(qid) as IterableIterator<Row>) {
        const body = Buffer.from(row.body).toString("base64");
        const { id, flags, created, expires, deliveries, due } = row;
        out.line(JSON.stringify({
          type: "message", queue: name, id, flags, created, expires, body,
          ...(due > 0 ? { due } : {}), ...(deliveries > 0 ? { deliveries } : {}),
        }));
        shown.count(++count);
        collectEvery(count);
      }
    }
    const tokens = only === null
      ? db.query("SELECT queue, token, until FROM dedup ORDER BY queue, token")
      : db.query("SELECT queue, token, until FROM dedup WHERE queue = ? ORDER BY token");
    type Token = { queue: string; token: string; until: number };
    for (const t of (only === null ? tokens.iterate() : tokens.iterate(only)) as IterableIterator<Token>) {
      out.line(JSON.stringify({ type: "token", queue: t.queue, token: t.token, until: t.until }));
    }
    out.line(JSON.stringify({ type: "end", queues: queues.length, messages: count }));
    out.flush();
    shown.done();
    return count;
  } finally {
    db.close();
  }
}
