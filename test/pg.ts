/**
 * Tests that need a real Postgres read its URL from MCQ_TEST_PG (scripts/pg.sh start prints it;
 * .ci/run exports it). Without it they do not silently pass: under CI=true they fail, saying
 * why; elsewhere one line says that they did not run.
 */
import { SQL } from "bun";
import { test } from "bun:test";

export const PG_URL = process.env.MCQ_TEST_PG ?? null;

let said = false;

/** Whether Postgres tests can run here; registers a failing test under CI when they cannot. */
export function havePostgres(what: string): boolean {
  if (PG_URL !== null) return true;
  const why = `${what}: MCQ_TEST_PG is not set (start one with: eval "$(scripts/pg.sh start)"; export MCQ_TEST_PG)`;
  if (process.env.CI === "true") {
    test(`${what} needs Postgres`, () => {
      throw new Error(why);
    });
  } else if (!said) {
    said = true;
    console.log(`Postgres tests did not run: ${why}`);
  }
  return false;
}

let n = 0;

/** A fresh schema name, unique to this process and call: its own empty store. */
export function freshSchema(tag = "t"): string {
  return `mcq_${tag}_${process.pid}_${Date.now().toString(36)}_${n++}`;
}

/** The store URL for `schema`. */
export function pgStoreUrl(schema: string): string {
  return `${PG_URL}${PG_URL!.includes("?") ? "&" : "?"}schema=${schema}`;
}

/** Drops the schemas the tests made. */
export async function dropSchemas(schemas: string[]): Promise<void> {
  if (PG_URL === null || schemas.length === 0) return;
  const sql = new SQL(PG_URL, { max: 1 });
  for (const s of schemas) await sql.unsafe(`DROP SCHEMA IF EXISTS ${s} CASCADE`).catch(() => {});
  await sql.close();
}
