/**
 * `mcq check -H <dir>`: verifies a data directory offline: SQLite's quick_check, then every
 * queue's counters against its messages. Exit 0 when sound, 1 otherwise.
 */
import { Command, CommanderError } from "commander";
import { join } from "node:path";
import { DEFAULTS } from "../config";
import { DB_FILE, verify } from "../store/sqlite-file";
import { openDataDir, ToolError } from "./datadir";

export function runCheck(argv: string[], out: (line: string) => void): number {
  const cmd = new Command("mcq check")
    .description("verify a data directory offline (stop the server first)")
    .option("-H, --home <dir>", "data directory", DEFAULTS.home)
    .exitOverride()
    .configureOutput({ writeErr: () => {} });
  let home: string;
  try {
    home = cmd.parse(argv, { from: "user" }).opts<{ home: string }>().home;
  } catch (e) {
    if (e instanceof CommanderError && e.code === "commander.helpDisplayed") return 0;
    out(`mcq check: ${(e as Error).message.replace(/^error: /, "")}`);
    return 2;
  }
  const file = join(home, DB_FILE);
  let db;
  try {
    db = openDataDir("check", home, false);
  } catch (e) {
    out((e as ToolError).message);
    return 1;
  }
  try {
    const problems = verify(db, true);
    for (const p of problems) out(`problem: ${p}`);
    const [queues, messages, bytes] = db
      .query("SELECT count(*), coalesce(sum(items), 0), coalesce(sum(bytes), 0) FROM queues")
      .values()[0] as number[];
    out(`${problems.length === 0 ? "ok" : "damaged"}: ${file}: ${queues} queues, ${messages} messages, ${bytes} bytes`);
    return problems.length === 0 ? 0 : 1;
  } catch (e) {
    out(`mcq check: ${file}: ${(e as Error).message}`);
    return 1;
  } finally {
    db.close();
  }
}
