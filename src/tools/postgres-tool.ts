/**
 * What `mcq dump --store` and `mcq load --store` share: one connection to the writable host of
 * the store's URL (postgres-hosts.ts), that cannot be replaced unnoticed; the schema made if there
 * is none, otherwise read as it is found (neither tool upgrades it); and every
 * round trip bounded by ROUND_TRIP_MS, so that a Postgres that stops answering ends the tool
 * with a message and exit 1, never a hang. Every failure is a ToolError naming the URL without
 * its password, as `mcq redrive --store` says it.
 */
import { randomUUID } from "node:crypto";
import type { SQL } from "bun";
import { connectPrimary, parseStoreUrl, type StoreUrl } from "../store/postgres-hosts";
import { migrate, SCHEMA_VERSION } from "../store/postgres-schema";
import { ToolError } from "./datadir";
import { within } from "../within";

/** The oldest schema the tools use as it is: version 3 has every counter column the dump format carries. */
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
  /** BEGIN (with `mode`), the transaction marked so that commit() knows it is still the one begun. */
  begin(mode?: string): Promise<void>;
  /**
   * COMMIT, once the mark set by begin() is found: a COMMIT on any other connection or transaction
   * would commit nothing of ours and say so only as a warning. A COMMIT without an answer is
   * reported as such (with `unknown`: what tells): it may have landed.
   */
  commit(unknown?: string): Promise<void>;
  close(): Promise<void>;
}

const bounded = <T>(work: Promise<T>, what: string) => within(work, ROUND_TRIP_MS, () => new Error(`no answer within ${ROUND_TRIP_MS} ms (${what})`));

const oneLine = (e: unknown) => (e as Error).message.replace(/\s+/g, " ");

/**
 * Whether Postgres answered `e` itself, so that a COMMIT it ends did not happen: an error with a
 * SQLSTATE outside classes 08 (connection) and 57 (the backend ended: it may have committed first).
 */
const answered = (e: unknown) => {
  const state = (e as { errno?: unknown }).errno;
  return typeof state === "string" && /^[0-9A-Z]{5}$/.test(state) && !/^(08|57)/.test(state);
};

/** Connects, and finds the schema: made if `create` and absent; otherwise read as it is (READS_FROM to SCHEMA_VERSION). */
async function openSchema(tool: string, c: SQL, parsed: StoreUrl, create: boolean): Promise<void> {
  const [row] = await c.unsafe("SELECT to_regclass($1) IS NOT NULL AS found", [`${parsed.schema}.mcq_version`]);
  if (!row.found) {
    if (create) return void (await migrate(c, parsed.schema));
    throw new ToolError(`mcq ${tool}: no mcq store in schema ${parsed.schema} of ${parsed.safe}`);
  }
  // An existing schema is not upgraded, by a dump nor by a load: older nodes beside it would refuse
  // it at their next start. Version 3 has every table and column either tool uses.
  const version = Number((await c.unsafe(`SELECT max(version) AS v FROM ${parsed.schema}.mcq_version`))[0].v);
  if (!(version >= READS_FROM && version <= SCHEMA_VERSION)) {
    throw new ToolError(`mcq ${tool}: the schema ${parsed.schema} of ${parsed.safe} is version ${version}; this mcq reads ` +
      `${READS_FROM} to ${SCHEMA_VERSION} (${version > SCHEMA_VERSION ? "upgrade mcq" : "a node of this mcq brings it up to date when it starts"})`);
  }
}

/**
 * Opens the store of `url` for `tool`. `create`: a store that does not exist yet is made (load);
 * otherwise its absence is an error (dump reads nothing out of an empty database).
 *
 * Every statement goes to one reserved connection: once it ends (a restart, a failover,
 * pg_terminate_backend, idle_in_transaction_session_timeout), each later statement fails, where
 * the client's pool would open a new connection and run the rest of a load outside its
 * transaction, each statement committing on its own.
 */
export async function openToolStore(tool: string, url: string, create: boolean): Promise<ToolStore> {
  let safe = "the --store URL";
  let pool: SQL | null = null;
  try {
    const parsed = parseStoreUrl(url);
    safe = parsed.safe;
    const open = async () => {
      pool = (await connectPrimary(parsed)).sql;
      const reserved = await pool.reserve();
      await openSchema(tool, reserved, parsed, create);
      return reserved;
    };
    const c: SQL = await bounded(open(), "connecting");
    let broken = false;
    const mark = randomUUID();
    // Every statement of a load is in its transaction, which ends with its connection or its first error.
    const undone = tool === "load" ? "; nothing loaded" : "";
    const fail = (e: unknown) => new ToolError(`mcq ${tool}: Postgres ${safe}: ${oneLine(e)}${undone}`);
    const send = async <T>(text: string, params: unknown[]) => {
      if (broken) throw new ToolError(`mcq ${tool}: the connection to ${safe} was given up${undone}`);
      return bounded(c.unsafe(text, params).execute(), text.trim().split(/\s/)[0]!).catch((e) => {
        broken = true; // a round trip with no answer may still be running: nothing more is sent after it
        throw e;
      }) as Promise<T[]>;
    };
    const ask = <T>(text: string, params: unknown[] = []) => send<T>(text, params).catch((e) => {
      throw e instanceof ToolError ? e : fail(e);
    });
    return {
      schema: parsed.schema,
      safe,
      ask,
      async begin(mode = "") {
        await ask(`BEGIN ${mode}`);
        await ask("SELECT set_config('mcq.tool_transaction', $1, true)", [mark]);
      },
      async commit(unknown = "") {
        const [found] = await ask<{ mark: string | null }>("SELECT current_setting('mcq.tool_transaction', true) AS mark");
        if (found?.mark !== mark) {
          broken = true;
          throw new ToolError(`mcq ${tool}: the connection to ${safe} is no longer the one whose transaction began; nothing committed`);
        }
        await send("COMMIT", []).catch((e) => {
          if (answered(e)) throw fail(e);
          throw new ToolError(`mcq ${tool}: Postgres ${safe}: no answer to COMMIT (${oneLine(e)}): the outcome is unknown${unknown}`);
        });
      },
      close: () => pool!.close({ timeout: 0 }).catch(() => {}),
    };
  } catch (e) {
    void (pool as SQL | null)?.close({ timeout: 0 }).catch(() => {});
    if (e instanceof ToolError) throw e;
    throw new ToolError(`mcq ${tool}: cannot open the Postgres store ${safe}: ${oneLine(e)}`);
  }
}
