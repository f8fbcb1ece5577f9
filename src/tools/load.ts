/**
 * `mcq load -H <dir> [--append] <file>` (or - for stdin): reads a dump (format.ts) line by line.
 * Messages are added after any already in their queue, in the order of the file, and the dumped
 * counters are added to the queue's own. Everything is one transaction, so a bad line, or a dump
 * cut short (no end line), loads nothing. The dump's id is recorded in the data directory (table
 * `loads`), and a dump already loaded there is refused unless --append says to add it again.
 */
import type { Database } from "bun:sqlite";
import { ToolError, openDataDir } from "./datadir";
import { FEATURE_FIELDS } from "./format";
import { readDump, type Sink } from "./load-lines";

export interface LoadResult {
  messages: number;
  /** Said on stderr: e.g. that a dump without an id cannot be told from one loaded before. */
  notes: string[];
}

/** Prepared statements of one load. */
function statements(db: Database) {
  db.run("CREATE TABLE IF NOT EXISTS loads(dump_id TEXT PRIMARY KEY, loaded_at INTEGER NOT NULL, messages INTEGER NOT NULL)");
  return {
    queueId: db.query("SELECT id FROM queues WHERE name = ?"),
    createQueue: db.query("INSERT INTO queues(name) VALUES (?) RETURNING id"),
    addCounters: db.query(`UPDATE queues SET total = total + ?, fetched = fetched + ?, ${FEATURE_FIELDS.map((f) => `${f} = ${f} + ?`).join(", ")} WHERE id = ?`),
    addMessage: db.query("INSERT INTO messages(id, qid, flags, created, expires, deliveries, body) VALUES (?, ?, ?, ?, ?, ?, ?)"),
    addDelayed: db.query("INSERT INTO delayed(id, qid, flags, created, expires, deliveries, due, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"),
    // A token loaded twice keeps the later end of its window.
    addToken: db.query("INSERT INTO dedup(queue, token, until) VALUES (?, ?, ?) ON CONFLICT DO UPDATE SET until = max(until, excluded.until)"),
    addItems: db.query("UPDATE queues SET items = items + ?, bytes = bytes + ? WHERE id = ?"),
    lastId: db.query("SELECT max(coalesce((SELECT max(last_id) FROM queues), 0), coalesce((SELECT max(id) FROM messages), 0), " +
      "coalesce((SELECT max(id) FROM delayed), 0))"),
    saveLastId: db.query("UPDATE queues SET last_id = ?"),
    loadedAt: db.query("SELECT loaded_at FROM loads WHERE dump_id = ?"),
    recordLoad: db.query("INSERT OR REPLACE INTO loads(dump_id, loaded_at, messages) VALUES (?, ?, ?)"),
  };
}

/** The SQLite side of a load (load-lines.ts checks the lines): each line into the open transaction. */
function sqliteSink(st: ReturnType<typeof statements>, home: string, append: boolean) {
  const last = st.lastId.values()[0]![0] as number;
  /** Queue name → [id, messages added, bytes added]: the items counters are written once, at the end. */
  const known = new Map<string, [number, number, number]>();
  let dumpId: string | null = null;
  let next = last + 1;
  /** A restore into a data directory that never held a message keeps the dumped ids (gets shows them). */
  let keepIds = false;
  let count = 0;
  const queue = (name: string) => {
    let q = known.get(name);
    if (q !== undefined) return q;
    const id = (st.queueId.values(name)[0]?.[0] as number | undefined) ?? (st.createQueue.values(name)[0]![0] as number);
    known.set(name, (q = [id, 0, 0]));
    return q;
  };

  const sink: Sink = {
    header(line) {
      const at = st.loadedAt.values(line.id)[0]?.[0] as number | undefined;
      if (at !== undefined && !append) {
        throw new ToolError(`mcq load: dump ${line.id} was loaded into ${home} on ${new Date(at).toISOString()}; ` +
          "nothing loaded (--append loads it again)");
      }
      dumpId = line.id;
      keepIds = last === 0;
      if (keepIds) next = Math.max(next, line.lastId + 1);
    },
    queue(line) {
      st.addCounters.run(line.total, line.fetched, ...FEATURE_FIELDS.map((f) => line[f] ?? 0), queue(line.name)[0]);
    },
    token: (line) => st.addToken.run(line.queue, line.token, line.until),
    message(line, n) {
      const q = queue(line.queue); // lines written by hand (a migration) may leave out the queue lines
      const body = Buffer.from(line.body, "base64");
      let id = next++;
      if (keepIds) {
        if (line.id === undefined) throw new ToolError(`mcq load: line ${n}: a message without its id`);
        id = line.id;
        next = Math.max(next - 1, id + 1);
      }
      try {
        const deliveries = line.deliveries ?? 0;
        if ((line.due ?? 0) > 0) st.addDelayed.run(id, q[0], line.flags, line.created, line.expires, deliveries, line.due!, body);
        else st.addMessage.run(id, q[0], line.flags, line.created, line.expires, deliveries, body);
      } catch (e) {
        // A dump holds each id once: only a file edited by hand can repeat one.
        if (!String((e as { code?: string }).code).startsWith("SQLITE_CONSTRAINT")) throw e;
        throw new ToolError(`mcq load: line ${n}: message id ${id} a second time`);
      }
      q[1]++;
      q[2] += body.length;
      count++;
    },
  };

  /** After the last line: the items counters, the last id, and the dump's id as loaded. */
  function finish(): void {
    for (const [id, items, bytes] of known.values()) st.addItems.run(items, bytes, id);
    st.saveLastId.run(next - 1);
    if (dumpId !== null) st.recordLoad.run(dumpId, Date.now(), count);
  }

  return { sink, finish };
}

export async function load(home: string, input: AsyncIterable<Uint8Array>, append: boolean): Promise<LoadResult> {
  const db = openDataDir("load", home, true);
  const notes: string[] = [];
  db.run("BEGIN IMMEDIATE");
  try {
    const run = sqliteSink(statements(db), home, append);
    const read = await readDump(input, run.sink, notes);
    run.finish();
    db.run("COMMIT");
    return { messages: read.count, notes };
  } catch (e) {
    try {
      db.run("ROLLBACK");
    } catch {
      // SQLite rolled back already (a full disk can do that): the error that did it is what counts.
    }
    throw e;
  } finally {
    db.close();
  }
}
