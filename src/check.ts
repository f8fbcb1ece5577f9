/**
 * `mcq check -H <dir>`: verifies a data directory offline. It takes the same lock as the
 * server, so it refuses to run beside one. Exit 0 when sound, 1 otherwise.
 */
import { Command, CommanderError } from "commander";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { DEFAULTS } from "./config";
import { DB_FILE, StoreLockedError, openDatabase, verify } from "./store/sqlite-file";

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
  if (!existsSync(file)) {
    out(`mcq check: no data file ${file}`);
    return 1;
  }
  let db;
  try {
    db = openDatabase(file, { sync: "full", cacheMb: DEFAULTS.cacheMb });
  } catch (e) {
    out(`mcq check: ${e instanceof StoreLockedError ? `${(e as Error).message}; stop it first` : (e as Error).message}`);
    return 1;
  }
  try {
    const version = db.query("PRAGMA user_version").values()[0]![0];
    const tables = db.query("SELECT count(*) FROM sqlite_master WHERE name IN ('queues', 'messages')").values()[0]![0];
    if (version !== 1 || tables !== 2) {
      out(`mcq check: ${file} is not an mcq data file (schema ${version})`);
      return 1;
    }
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
