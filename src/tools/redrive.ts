/**
 * `mcq redrive -H <dir> <from> <to>`: moves every waiting message of `from` to the tail of `to`
 * (dead letters back after a fix), offline, in one transaction, through the store itself so the
 * counters stay exact. With the server running, `redrive <from> <to>` over the protocol does it.
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import { ToolError } from "./datadir";
import { DB_FILE, openSqliteStore, StoreLockedError } from "../store/sqlite";

export function redrive(home: string, from: string, to: string): number {
  const name = /^[\x21-\x2e\x30-\x7e]{1,250}$/;
  for (const q of [from, to]) if (!name.test(q)) throw new ToolError(`mcq redrive: ${JSON.stringify(q)} is not a queue name`);
  if (!existsSync(join(home, DB_FILE))) throw new ToolError(`mcq redrive: no data file ${join(home, DB_FILE)}`);
  let store;
  try {
    store = openSqliteStore(home, { sync: "full", cacheMb: 16 });
  } catch (e) {
    const stop = e instanceof StoreLockedError ? "; stop the server first, or send `redrive <from> <to>` to it" : "";
    throw new ToolError(`mcq redrive: ${(e as Error).message}${stop}`);
  }
  try {
    const n = store.deadLetters!.redrive(from, to, Date.now());
    store.commit();
    return n as number; // SQLite answers at once
  } finally {
    store.close();
  }
}
