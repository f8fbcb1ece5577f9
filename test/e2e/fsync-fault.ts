/**
 * Preloaded into a test server (bun --preload): once the file `fail-fsync` exists in the data
 * directory (-H), every COMMIT throws what SQLite throws when fsync returns EIO. No PRAGMA can
 * make SQLite fail an fsync, and the test machine has no device-mapper to fail a disk.
 */
import { Database } from "bun:sqlite";
import { existsSync } from "node:fs";
import { join } from "node:path";

const home = process.argv[process.argv.indexOf("-H") + 1]!;
const trigger = join(home, "fail-fsync");
const prepare = Database.prototype.prepare;
Database.prototype.prepare = function (this: Database, ...args: Parameters<Database["prepare"]>) {
  const statement = prepare.apply(this, args);
  if (args[0] === "COMMIT") {
    const run = statement.run.bind(statement);
    statement.run = (...params: Parameters<typeof run>) => {
      if (existsSync(trigger)) throw Object.assign(new Error("disk I/O error"), { code: "SQLITE_IOERR_FSYNC" });
      return run(...params);
    };
  }
  return statement;
} as Database["prepare"];
