/**
 * `mcq load -H <dir> [--append] <file>` (or - for stdin): reads a dump (format.ts) line by line.
 * Messages are added after any already in their queue, in the order of the file, and the dumped
 * counters are added to the queue's own. Everything is one transaction, so a bad line, or a dump
 * cut short (no end line), loads nothing. The dump's id is recorded in the data directory (table
 * `loads`), and a dump already loaded there is refused unless --append says to add it again.
 */
import type { Database } from "bun:sqlite";
import { ToolError, openDataDir } from "./datadir";
import { FEATURE_FIELDS, lines, parseLine, type Header, type Line } from "./format";
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

/** What a load has read so far, and what each kind of line does to it (one transaction). */
function loader(st: ReturnType<typeof statements>, home: string, append: boolean) {
  const last = st.lastId.values()[0]![0] as number;
  /** Queue name → [id, messages added, bytes added]: the items counters are written once, at the end. */
  const known = new Map<string, [number, number, number]>();
  const counted = new Set<string>();
  const state = {
    header: null as Header | null,
    legacy: false,
    ended: false,
    queues: 0,
    count: 0,
    next: last + 1,
    /** A restore into a data directory that never held a message keeps the dumped ids (gets shows them). */
    keepIds: false,
  };
  const queue = (name: string) => {
    let q = known.get(name);
    if (q !== undefined) return q;
    const id = (st.queueId.values(name)[0]?.[0] as number | undefined) ?? (st.createQueue.values(name)[0]![0] as number);
    known.set(name, (q = [id, 0, 0]));
    return q;
  };

  function header(line: Header): void {
    const at = st.loadedAt.values(line.id)[0]?.[0] as number | undefined;
    if (at !== undefined && !append) {
      throw new ToolError(`mcq load: dump ${line.id} was loaded into ${home} on ${new Date(at).toISOString()}; ` +
        "nothing loaded (--append loads it again)");
    }
    state.header = line;
    state.keepIds = last === 0;
    if (state.keepIds) state.next = Math.max(state.next, line.lastId + 1);
  }

  function message(line: Extract<Line, { type: "message" }>, n: number): void {
    const q = queue(line.queue); // lines written by hand (a migration) may leave out the queue lines
    const body = Buffer.from(line.body, "base64");
    let id = state.next++;
    if (state.keepIds) {
      if (line.id === undefined) throw new ToolError(`mcq load: line ${n}: a message without its id`);
      id = line.id;
      state.next = Math.max(state.next - 1, id + 1);
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
    state.count++;
  }

  /** One line of the dump, the `n`th of the file. */
  function take(line: Line, n: number, notes: string[]): void {
    if (state.ended) throw new ToolError(`mcq load: line ${n}: a line after the end line`);
    if (state.header === null && !state.legacy) {
      if (line.type === "dump") return header(line);
      state.legacy = true;
      notes.push("this dump has no id (written by mcq 1.0.0): loading it twice would add its messages twice");
    }
    if (line.type === "dump") throw new ToolError(`mcq load: line ${n}: a second header`);
    if (line.type === "end") {
      if (line.queues !== state.queues || line.messages !== state.count) {
        throw new ToolError(`mcq load: line ${n}: the end line counts ${line.queues} queues and ${line.messages} messages; ` +
          `the dump holds ${state.queues} and ${state.count}`);
      }
      state.ended = true;
    } else if (line.type === "queue") {
      if (counted.has(line.name)) throw new ToolError(`mcq load: line ${n}: queue ${line.name} a second time`);
      counted.add(line.name);
      st.addCounters.run(line.total, line.fetched, ...FEATURE_FIELDS.map((f) => line[f] ?? 0), queue(line.name)[0]);
      state.queues++;
    } else if (line.type === "token") st.addToken.run(line.queue, line.token, line.until);
    else message(line, n);
  }

  /** After the last line: the items counters, the last id, and the dump's id as loaded. */
  function finish(n: number): void {
    if (n === 0) throw new ToolError("mcq load: the input is empty: not a dump");
    if (state.header !== null && !state.ended) {
      throw new ToolError(`mcq load: the dump ends at line ${n} without its end line (cut short?); nothing loaded`);
    }
    for (const [id, items, bytes] of known.values()) st.addItems.run(items, bytes, id);
    st.saveLastId.run(state.next - 1);
    if (state.header !== null) st.recordLoad.run(state.header.id, Date.now(), state.count);
  }

  return { state, take, finish };
}

export async function load(home: string, input: AsyncIterable<Uint8Array>, append: boolean): Promise<LoadResult> {
  const db = openDataDir("load", home, true);
  const notes: string[] = [];
  const shown = progress("loaded");
  db.run("BEGIN IMMEDIATE");
  try {
    const run = loader(statements(db), home, append);
    let n = 0;
    for await (const text of lines(input)) {
      collectEvery(++n);
      if (text.trim() === "") continue;
      const before = run.state.count;
      run.take(parseLine(text, n), n, notes);
      if (run.state.count !== before) shown.count(run.state.count);
    }
    run.finish(n);
    db.run("COMMIT");
    shown.done();
    return { messages: run.state.count, notes };
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
