/**
 * What `mcq dump --store` and `mcq load --store` share: one connection to the writable host of
 * the store's URL (postgres-hosts.ts), the schema brought up to date as a node would for a load
 * (a dump reads the schema as it finds it), and every
 * round trip bounded by ROUND_TRIP_MS, so that a Postgres that stops answering ends the tool
 * with a message and exit 1, never a hang. Every failure is a ToolError naming the URL without
 * its password, as `mcq redrive --store` says it.
 */
import type { SQL } from "bun";
import { connectPrimary, parseStoreUrl } from "../store/postgres-hosts";
import { migrate, SCHEMA_VERSION } from "../store/postgres-schema";
import { ToolError } from "./datadir";

/** The oldest schema a dump reads as it is: version 3 has every counter column the dump format carries. */
const READS_FROM = 3;

/** A round trip (connecting, a FETCH, a chunk of inserts, the COMMIT) that takes longer fails the tool. */
const ROUND_TRIP_MS = Math.max(100, Number(process.env.MCQ_TOOL_PG_TIMEOUT_MS ?? 60_000));

export interface ToolStore {
  /** The schema holding mcq's tables (the URL's schema=, or public). */
  schema: string;
  /** The URL without its password, for messages. */
  safe: string;
  /** One statement, its rows; a failure or no answer within ROUND_TRIP_MS is a ToolError. */
  ask<T = Record<string, unknown>>(text: string, params?: unknown[]): Promise<T[]>;
  close(): Promise<void>;
}

function bounded<T>(work: Promise<T>, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, fail) => {
    timer = setTimeout(() => fail(new Error(`no answer within ${ROUND_TRIP_MS} ms (${what})`)), ROUND_TRIP_MS);
  });
  return Promise.race([work, late]).finally(() => clearTimeout(timer));
}

/**
 * Opens the store of `url` for `tool`. `create`: a store that does not exist yet is made (load);
 * otherwise its absence is an error (dump reads nothing out of an empty database).
 */
export async function openToolStore(tool: string, url: string, create: boolean): Promise<ToolStore> {
  let safe = "the --store URL";
  let sql: SQL | null = null;
  try {
    const parsed = parseStoreUrl(url);
    safe = parsed.safe;
    const open = async () => {
      sql = (await connectPrimary(parsed)).sql;
      if (create) return void (await migrate(sql, parsed.schema));
      const [row] = await sql.unsafe("SELECT to_regclass($1) IS NOT NULL AS found", [`${parsed.schema}.mcq_version`]);
      if (!row.found) throw new ToolError(`mcq ${tool}: no mcq store in schema ${parsed.schema} of ${safe}`);
      // Reading does not upgrade the schema: older nodes beside it would refuse it at their next start.
      const version = Number((await sql.unsafe(`SELECT max(version) AS v FROM ${parsed.schema}.mcq_version`))[0].v);
      if (!(version >= READS_FROM && version <= SCHEMA_VERSION)) {
        throw new ToolError(`mcq ${tool}: the schema ${parsed.schema} of ${safe} is version ${version}; this mcq reads ` +
          `${READS_FROM} to ${SCHEMA_VERSION} (${version > SCHEMA_VERSION ? "upgrade mcq" : "a node of this mcq brings it up to date when it starts"})`);
      }
    };
    await bounded(open(), "connecting");
    const c: SQL = sql!;
    let broken = false;
    return {
      schema: parsed.schema,
      safe,
      async ask<T>(text: string, params: unknown[] = []) {
        if (broken) throw new ToolError(`mcq ${tool}: the connection to ${safe} was given up`);
        try {
          return (await bounded(c.unsafe(text, params).execute(), text.trim().split(/\s/)[0]!)) as T[];
        } catch (e) {
          broken = true; // a round trip with no answer may still be running: nothing more is sent after it
          throw new ToolError(`mcq ${tool}: Postgres ${safe}: ${(e as Error).message.replace(/\s+/g, " ")}`);
        }
      },
      close: () => c.close({ timeout: 0 }).catch(() => {}),
    };
  } catch (e) {
    void (sql as SQL | null)?.close({ timeout: 0 }).catch(() => {});
    if (e instanceof ToolError) throw e;
    throw new ToolError(`mcq ${tool}: cannot open the Postgres store ${safe}: ${(e as Error).message.replace(/\s+/g, " ")}`);
  }
}
