/**
 * The stores a feature test runs against (issue 12: every feature works the same on both):
 * SQLite always, and Postgres too when MCQ_TEST_PG is set (CI sets it). On Postgres each data
 * directory gets its own schema, so a server restarted on the same directory finds its data.
 */
import { join } from "node:path";
import { dropSchemas, freshSchema, PG_URL, pgStoreUrl } from "../pg";
import { startServer, tempDir, type Running } from "./harness";

export type StoreKind = "sqlite" | "postgres";

export const STORES: StoreKind[] = PG_URL === null ? ["sqlite"] : ["sqlite", "postgres"];

const schemas = new Map<string, string>();

/** The arguments that put a server with data directory `home` on `store`. */
export function storeArgs(store: StoreKind, home: string): string[] {
  if (store === "sqlite") return [];
  let schema = schemas.get(home);
  if (schema === undefined) schemas.set(home, (schema = freshSchema("e2e")));
  return ["--store", pgStoreUrl(schema)];
}

/** startServer() on `store`. */
export function startOn(store: StoreKind, extra: string[] = [], home = join(tempDir(), "data"), env: Record<string, string> = {}): Promise<Running> {
  return startServer([...extra, ...storeArgs(store, home)], home, undefined, env);
}

/** Drops the schemas made here (call in afterAll, after the servers stopped). */
export function dropStoreSchemas(): Promise<void> {
  return dropSchemas([...schemas.values()]);
}
