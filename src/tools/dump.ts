/**
 * `mcq dump -H <dir> [--queue <q>]`: writes the queues as JSON Lines on stdout, a backup that
 * `mcq load` reads back exactly. First one line per queue with its counters, then every message
 * in order:
 *   {"type":"queue","name":"jobs","total":12,"fetched":4}
 *   {"type":"message","queue":"jobs","flags":0,"created":1764000000000,"expires":0,"body":"<base64>"}
 * Open messages are dumped as waiting ones: a restart would put them back too.
 */
import { openDataDir } from "./datadir";

export function dump(home: string, only: string | null, write: (line: string) => void): number {
  const db = openDataDir("dump", home, false);
  try {
    const queues = (db.query("SELECT id, name, total, fetched FROM queues ORDER BY name").values() as [number, string, number, number][])
      .filter(([, name]) => only === null || name === only);
    for (const [, name, total, fetched] of queues) write(JSON.stringify({ type: "queue", name, total, fetched }));
    const messages = db.query("SELECT flags, created, expires, body FROM messages WHERE qid = ? ORDER BY id");
    let count = 0;
    for (const [qid, name] of queues) {
      for (const row of messages.iterate(qid) as IterableIterator<{ flags: number; created: number; expires: number; body: Uint8Array }>) {
        const body = Buffer.from(row.body).toString("base64");
        write(JSON.stringify({ type: "message", queue: name, flags: row.flags, created: row.created, expires: row.expires, body }));
        count++;
      }
    }
    return count;
  } finally {
    db.close();
  }
}
