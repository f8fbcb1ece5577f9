/**
 * The `--store` URL and finding the writable Postgres. Bun.SQL takes one host; a URL may name
 * several (libpq style: `postgres://u:p@h1:5432,h2:5433/db`), so mcq walks them in order and
 * keeps the first that is neither in recovery nor read-only: the primary. After a failover the same walk
 * finds the promoted standby.
 *
 * `schema=<name>` in the query string is mcq's own: the store's tables live in that schema
 * (created if missing) instead of `public`, so that several mcq clusters, or tests, share one
 * database. Other query parameters go to Bun.SQL as they are.
 *
 * The password never appears in a message: describe() prints the URL without it.
 */
import { SQL } from "bun";
import type { Statements } from "./postgres-sql";
import { StoreError } from "./store";

export interface StoreUrl {
  /** One URL per host, in the order given, each complete (user, password, database, options). */
  hosts: string[];
  /** The schema holding mcq's tables. */
  schema: string;
  /** The URL for messages: no password. */
  safe: string;
}

const SCHEMA_NAME = /^[a-z_][a-z0-9_]{0,62}$/;

/** Parses a postgres:// URL with one or more comma-separated hosts; throws Error saying why not. */
export function parseStoreUrl(url: string): StoreUrl {
  const m = /^(postgres(?:ql)?):\/\/(?:([^@/]*)@)?([^/?#]*)(\/[^?#]*)?(\?[^#]*)?$/.exec(url);
  if (m === null) throw new Error(`--store: not a postgres:// URL`);
  const [, scheme, auth, hostList, path, query] = m;
  const hosts = hostList!.split(",").filter((h) => h !== "");
  if (hosts.length === 0) throw new Error(`--store: no host in the URL`);
  const params = new URLSearchParams(query ?? "");
  const schema = params.get("schema") ?? "public";
  if (!SCHEMA_NAME.test(schema)) throw new Error(`--store: schema must be a lowercase identifier (a-z, 0-9, _), not '${schema}'`);
  params.delete("schema");
  const rest = params.toString();
  const tail = (path ?? "") + (rest === "" ? "" : `?${rest}`);
  const user = auth === undefined ? "" : `${auth}@`;
  const safeUser = auth === undefined ? "" : `${auth.split(":")[0]}@`;
  return {
    hosts: hosts.map((h) => `${scheme}://${user}${h}${tail}`),
    schema,
    safe: `${scheme}://${safeUser}${hosts.join(",")}${tail}`,
  };
}

/**
 * A COMMIT with no answer (postgres-batches.ts) needs pg_current_xact_id and pg_xact_status (13) and
 * pg_terminate_backend(pid, timeout), which waits for the backend to end (14). 13 is out of support.
 */
const MIN_VERSION = 140000;

/** Refuses a server older than Postgres 14; `num` is its server_version_num. */
export function checkVersion(num: number, host: string): void {
  if (!(num >= MIN_VERSION)) {
    // 90624 is 9.6.24; from 10 on, 100023 is 10.23.
    const v = !Number.isFinite(num) ? "unknown" : num < 100000 ? `${Math.floor(num / 10000)}.${Math.floor(num / 100) % 100}.${num % 100}` : `${Math.floor(num / 10000)}.${num % 10000}`;
    throw new StoreError(`Postgres: ${host} runs version ${v}; mcq needs Postgres 14 or later`);
  }
}

/**
 * Whether a host takes writes, as libpq's target_session_attrs=read-write asks: a primary fenced
 * read-only (default_transaction_read_only = on, as managed services do when its disk is nearly
 * full, or an old primary set aside) is not writable either: every batch would fail there.
 */
export const WRITABLE = "SELECT pg_is_in_recovery() AS standby, current_setting('transaction_read_only')::bool AS readonly";

/** Seconds to wait for one host to accept a connection before trying the next. */
const CONNECT_TIMEOUT_S = 3;

/**
 * Connects to the first writable host of the list; throws StoreError naming what each host said.
 * The returned client has one connection, used for everything but LISTEN (store.ts says why).
 */
export async function connectPrimary(url: StoreUrl): Promise<{ sql: SQL; host: string; url: string }> {
  const reasons: string[] = [];
  for (const host of url.hosts) {
    const label = host.replace(/\/\/[^@/]*@/, "//").replace(/^postgres(ql)?:\/\//, "").replace(/[/?].*$/, "");
    const sql = new SQL(host, { max: 1, connectionTimeout: CONNECT_TIMEOUT_S, idleTimeout: 0, onclose: () => {} });
    try {
      const [row] = await sql.unsafe(WRITABLE);
      if (row.standby || row.readonly) {
        reasons.push(`${label}: ${row.standby ? "a standby" : "read-only (default_transaction_read_only)"}`);
        await sql.close();
        continue;
      }
      return { sql, host: label, url: host };
    } catch (e) {
      reasons.push(`${label}: ${(e as Error).message}`);
      await sql.close().catch(() => {});
    }
  }
  throw new StoreError(`Postgres: no writable host (${reasons.join("; ")})`);
}

// A test seam (test/e2e/postgres-commit.test.ts): the identity recorded when a connection is
// made, as if the server had changed since (a failover, a restart) when the side connection asks.
export const identity = async (st: Statements, on: SQL) => process.env.MCQ_TEST_PG_IDENTITY || (await st.identity(on));

/** The writable host, refused if older than 14, with the identity of the server its xids belong to. */
export async function connectChecked(url: StoreUrl, st: Statements) {
  const found = await connectPrimary(url);
  try {
    checkVersion(Number((await found.sql.unsafe("SHOW server_version_num"))[0].server_version_num), found.host);
    return { ...found, server: await identity(st, found.sql) };
  } catch (e) {
    await found.sql.close().catch(() => {});
    throw e;
  }
}
