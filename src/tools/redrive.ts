/**
 * `mcq redrive -H <dir> <from> <to>`: moves every waiting message of `from` to the tail of `to`
 * (dead letters back after a fix), offline, in one transaction, through the store itself so the
 * counters stay exact. With the server running, `redrive <from> <to>` over the protocol does it.
 * `mcq redrive --store <url> <from> <to>` does it on Postgres, beside running nodes (they share
 * the database; waiting gets on `to` are woken by the commit's NOTIFY).
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import { ToolError } from "./datadir";
import { openPostgresStore } from "../store/postgres";
import { parseStoreUrl } from "../store/postgres-hosts";
import { DB_FILE, openSqliteStore, StoreLockedError } from "../store/sqlite";

function checkNames(from: string, to: string): void {
  const name = /^[\x21-\x2e\x30-\x7e]{1,250}$/;
  for (const q of [from, to]) if (!name.test(q)) throw new ToolError(`mcq redrive: ${JSON.stringify(q)} is not a queue name`);
}

export async function redrivePostgres(url: string, from: string, to: string): Promise<number> {
  checkNames(from, to);
  let safe = "the --store URL";
  let store;
  try {
    safe = parseStoreUrl(url).safe;
    store = await openPostgresStore(url, { leaseS: 30, timeoutMs: 5000, log: () => {}, home: null });
  } catch (e) {
    throw new ToolError(`mcq redrive: cannot open the Postgres store ${safe}: ${(e as Error).message}`);
  }
  try {
    // Its count answers once the batch is sent, at commit.
    const n = store.deadLetters!.redrive(from, to, Date.now());
    await store.commit();
    return await n;
  } catch (e) {
    throw new ToolError(`mcq redrive: ${(e as Error).message}`);
  } finally {
    await store.close();
  }
}

export function redrive(home: string, from: string, to: string): number {
  checkNames(from, to);
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
