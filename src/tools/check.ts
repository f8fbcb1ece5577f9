/**
 * `mcq check -H <dir>`: verifies a data directory offline: SQLite's quick_check, then every
 * queue's counters against its messages. Returns 0 when sound, 1 otherwise.
 */
import { join } from "node:path";
import { DB_FILE, verify } from "../store/sqlite-file";
import { openDataDir } from "./datadir";

export function check(home: string, out: (line: string) => void): number {
  const file = join(home, DB_FILE);
  const db = openDataDir("check", home, false);
  try {
    const problems = verify(db, true);
    for (const p of problems) out(`problem: ${p}`);
    const [queues, messages, bytes] = db
      .query("SELECT count(*), coalesce(sum(items), 0), coalesce(sum(bytes), 0) FROM queues")
      .values()[0] as number[];
    out(`${problems.length === 0 ? "ok" : "damaged"}: ${file}: ${queues} queues, ${messages} messages, ${bytes} bytes`);
    return problems.length === 0 ? 0 : 1;
  } finally {
    db.close();
  }
}
