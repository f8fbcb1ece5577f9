/**
 * Opening a data directory for an offline tool (check, dump, load): the same lock as the
 * server, so a tool refuses to run beside one, with the reason as a one-line message.
 */
import type { Database } from "bun:sqlite";
import { existsSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { DEFAULTS } from "../config";
import { foldCounterLog } from "../store/counter-log";
import { DB_FILE, StoreLockedError, migrate, openDatabase } from "../store/sqlite-file";

export class ToolError extends Error {}

/** The page cache of a tool: it reads or writes each page about once, so more would only cost memory. */
const TOOL_CACHE_MB = 16;

export function openDataDir(tool: string, home: string, create: boolean): Database {
  const file = join(home, DB_FILE);
  if (!create && !existsSync(file)) throw new ToolError(`mcq ${tool}: no data file ${file}`);
  if (create) mkdirSync(home, { recursive: true, mode: 0o700 });
  try {
    const db = openDatabase(file, { sync: "full", cacheMb: TOOL_CACHE_MB });
    migrate(db);
    foldCounterLog(db); // the queues table then holds every counter, as a tool reads it
    return db;
  } catch (e) {
    const stop = e instanceof StoreLockedError ? "; stop the server first" : "";
    throw new ToolError(`mcq ${tool}: ${(e as Error).message}${stop}`);
  }
}
