/**
 * `mcq load -H <dir> [--append] <file>` (or - for stdin): reads a dump (format.ts) line by line.
 * Messages are added after any already in their queue, in the order of the file, and the dumped
 * counters are added to the queue's own. Everything is one transaction, so a bad line, or a dump
 * cut short (no end line), loads nothing. The dump's id is recorded in the data directory (table
 * `loads`), and a dump already loaded there is refused unless --append says to add it again.
 */
import type { Database } from "bun:sqlite";
import { ToolError, openDataDir } from "./datadir";
import { FEATURE_FIELDS, lines, parseLine, type Header } from "./format";
import { collectEvery, progress } from "./output";

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

export async function load(home: string, input: AsyncIterable<Uint8Array>, append: boolean): Promise<LoadResult> {
  const db = openDataDir("load", home, true);
  const st = statements(db);
  const notes: string[] = [];
  const shown = progress("loaded");
  db.run("BEGIN IMMEDIATE");
  try {
    let header: Header | null = null;
    let legacy = false;
    let ended = false;
    let queues = 0;
    let count = 0;
    const last = st.lastId.values()[0]![0] as number;
    let next = last + 1;
    /** A restore into a data directory that never held a message keeps the dumped ids (gets shows them). */
    let keepIds = false;
    /** Queue name → [id, messages added, bytes added]: the items counters are written once, at the end. */
    const known = new Map<string, [number, number, number]>();
    const counted = new Set<string>();
    const queue = (name: string) => {
      let q = known.get(name);
      if (q !== undefined) return q;
      const id = (st.queueId.values(name)[0]?.[0] as number | undefined) ?? (st.createQueue.values(name)[0]![0] as number);
      known.set(name, (q = [id, 0, 0]));
      return q;
    };
    let n = 0;
    for await (const text of lines(input)) {
      collectEvery(++n);
      if (text.trim() === "") continue;
      const line = parseLine(text, n);
      if (ended) throw new ToolError(`mcq load: line ${n}: a line after the end line`);
      if (header === null && !legacy) {
        if (line.type === "dump") {
          header = line;
          const at = st.loadedAt.values(header.id)[0]?.[0] as number | undefined;
          if (at !== undefined && !append) {
            throw new ToolError(`mcq load: dump ${header.id} was loaded into ${home} on ${new Date(at).toISOString()}; ` +
              "nothing loaded (--append loads it again)");
          }
          keepIds = last === 0;
          if (keepIds) next = Math.max(next, header.lastId + 1);
          continue;
        }
        legacy = true;
        notes.push("this dump has no id (written by mcq 1.0.0): loading it twice would add its messages twice");
      }
      if (line.type === "dump") throw new ToolError(`mcq load: line ${n}: a second header`);
      if (line.type === "end") {
        if (line.queues !== queues || line.messages !== count) {
          throw new ToolError(`mcq load: line ${n}: the end line counts ${line.queues} queues and ${line.messages} messages; ` +
            `the dump holds ${queues} and ${count}`);
        }
        ended = true;
        continue;
      }
      if (line.type === "queue") {
        if (counted.has(line.name)) throw new ToolError(`mcq load: line ${n}: queue ${line.name} a second time`);
        counted.add(line.name);
        st.addCounters.run(line.total, line.fetched, ...FEATURE_FIELDS.map((f) => line[f] ?? 0), queue(line.name)[0]);
        queues++;
        continue;
      }
      if (line.type === "token") {
        st.addToken.run(line.queue, line.token, line.until);
        continue;
      }
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
      shown.count(++count);
    }
    if (n === 0) throw new ToolError("mcq load: the input is empty: not a dump");
    if (header !== null && !ended) throw new ToolError(`mcq load: the dump ends at line ${n} without its end line (cut short?); nothing loaded`);
    for (const [id, items, bytes] of known.values()) st.addItems.run(items, bytes, id);
    st.saveLastId.run(next - 1);
    if (header !== null) st.recordLoad.run(header.id, Date.now(), count);
    db.run("COMMIT");
    shown.done();
    return { messages: count, notes };
  } catch (e) {
    shown.done();
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
