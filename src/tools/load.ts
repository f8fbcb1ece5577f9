/**
 * `mcq load -H <dir> <file>` (or - for stdin): reads what `mcq dump` wrote. Messages are added
 * after any already in their queue, in the order of the file, and the dumped counters are added
 * to the queue's own; everything is one transaction, so a bad line loads nothing.
 */
import { openDataDir, ToolError } from "./datadir";

interface QueueLine {
  type: "queue";
  name: string;
  total: number;
  fetched: number;
}
interface MessageLine {
  type: "message";
  queue: string;
  flags: number;
  created: number;
  expires: number;
  body: string;
}

const NAME = /^[\x21-\x2e\x30-\x7e]{1,250}$/;

function check(line: unknown, n: number): QueueLine | MessageLine {
  const bad = (why: string) => new ToolError(`mcq load: line ${n}: ${why}`);
  if (typeof line !== "object" || line === null) throw bad("not a JSON object");
  const l = line as Record<string, unknown>;
  const whole = (v: unknown) => typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
  if (l.type === "queue") {
    if (typeof l.name !== "string" || !NAME.test(l.name)) throw bad("bad queue name");
    if (!whole(l.total) || !whole(l.fetched)) throw bad("bad counters");
    return l as unknown as QueueLine;
  }
  if (l.type === "message") {
    if (typeof l.queue !== "string" || !NAME.test(l.queue)) throw bad("bad queue name");
    if (!whole(l.flags) || (l.flags as number) > 4294967295 || !whole(l.created) || !whole(l.expires)) throw bad("bad numbers");
    if (typeof l.body !== "string" || !/^[A-Za-z0-9+/]*={0,2}$/.test(l.body)) throw bad("body is not base64");
    return l as unknown as MessageLine;
  }
  throw bad(`unknown type ${JSON.stringify(l.type)}`);
}

export function load(home: string, text: string): number {
  const lines = text.split("\n").filter((l) => l.trim() !== "");
  const parsed = lines.map((l, i) => {
    try {
      return check(JSON.parse(l), i + 1);
    } catch (e) {
      throw e instanceof ToolError ? e : new ToolError(`mcq load: line ${i + 1}: not JSON`);
    }
  });
  const db = openDataDir("load", home, true);
  try {
    const queueId = db.query("SELECT id FROM queues WHERE name = ?");
    const createQueue = db.query("INSERT INTO queues(name) VALUES (?) RETURNING id");
    const addCounters = db.query("UPDATE queues SET total = total + ?, fetched = fetched + ? WHERE id = ?");
    const addMessage = db.query("INSERT INTO messages(id, qid, flags, created, expires, body) VALUES (?, ?, ?, ?, ?, ?)");
    const addItems = db.query("UPDATE queues SET items = items + 1, bytes = bytes + ? WHERE id = ?");
    const lastId = db.query(
      "SELECT max(coalesce((SELECT max(last_id) FROM queues), 0), coalesce((SELECT max(id) FROM messages), 0))",
    );
    const saveLastId = db.query("UPDATE queues SET last_id = ?");
    let count = 0;
    db.transaction(() => {
      const ids = new Map<string, number>();
      const idOf = (name: string) => {
        let id = ids.get(name) ?? (queueId.values(name)[0]?.[0] as number | undefined);
        if (id === undefined) id = createQueue.values(name)[0]![0] as number;
        ids.set(name, id);
        return id;
      };
      let next = (lastId.values()[0]![0] as number) + 1;
      for (const line of parsed) {
        if (line.type === "queue") {
          addCounters.run(line.total, line.fetched, idOf(line.name));
          continue;
        }
        const qid = idOf(line.queue);
        const body = Buffer.from(line.body, "base64");
        addMessage.run(next++, qid, line.flags, line.created, line.expires, body);
        addItems.run(body.length, qid);
        count++;
      }
      saveLastId.run(next - 1);
    })();
    return count;
  } finally {
    db.close();
  }
}
