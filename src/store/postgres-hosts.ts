/**
 * The `--store` URL and finding the writable Postgres. Bun.SQL takes one host; a URL may name
 * several (libpq style: `postgres://u:p@h1:5432,h2:5433/db`), so mcq walks them in order and
 * keeps the first where pg_is_in_recovery() is false: the primary. After a failover the same walk
 * finds the promoted standby.
 *
 * `schema=<name>` in the query string is mcq's own: the store's tables live in that schema
 * (created if missing) instead of `public`, so that several mcq clusters, or tests, share one
 * database. Other query parameters go to Bun.SQL as they are.
 *
 * The password never appears in a message: `safe` is the URL without it (neither the user info's
 * nor a `password=` or `sslpassword=` query parameter).
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
  const m = /^(postgres(?:ql)?):\/\/([^/?#]*)(\/[^?#]*)?(\?[^#]*)?$/.exec(url);
  if (m === null) throw new Error(`--store: not a postgres:// URL`);
  const [, scheme, authority, path, query] = m;
  // The user info ends at the authority's last `@` (as WHATWG URL and Bun.SQL read it): a password
  // may hold a raw `@`. It is passed on with that `@` encoded, which Bun.SQL decodes.
  const at = authority!.lastIndexOf("@");
  const auth = at < 0 ? undefined : authority!.slice(0, at).replaceAll("@", "%40");
  const hostList = authority!.slice(at + 1);
  const hosts = hostList.split(",").filter((h) => h !== "");
  if (hosts.length === 0) throw new Error(`--store: no host in the URL`);
  const params = new URLSearchParams(query ?? "");
  const schema = params.get("schema") ?? "public";
  if (!SCHEMA_NAME.test(schema)) throw new Error(`--store: schema must be a lowercase identifier (a-z, 0-9, _), not '${schema}'`);
  params.delete("schema");
  const search = (p: URLSearchParams) => (p.size === 0 ? "" : `?${p.toString()}`);
  const tail = (path ?? "") + search(params);
  const user = auth === undefined ? "" : `${auth}@`;
  const safeUser = auth === undefined ? "" : `${auth.split(":")[0]}@`;
  // Bun.SQL takes a password from the query string too: those never go into a message.
  const shown = new URLSearchParams(params);
  for (const secret of ["password", "sslpassword"]) shown.delete(secret);
  return {
    hosts: hosts.map((h) => `${scheme}://${user}${h}${tail}`),
    schema,
    safe: `${scheme}://${safeUser}${hosts.join(",")}${path ?? ""}${search(shown)}`,
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
      const [row] = await sql.unsafe("SELECT pg_is_in_recovery() AS standby");
      if (row.standby) {
        reasons.push(`${label}: a standby`);
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
const identity = async (st: Statements, on: SQL) => process.env.MCQ_TEST_PG_IDENTITY || (await st.identity(on));

/**
 * Whether reading the identity failed for good on this server, not for now: a role without the
 * privilege (pg_control_system() revoked from PUBLIC, as a managed server may) or a function the
 * server lacks or refuses (42501, 42883, 0A000, by SQLSTATE). Anything else (a connection lost, a
 * statement cancelled, a server in recovery during a failover) passes: then no xid is given up on.
 */
export function unreadableForGood(e: unknown): boolean {
  const code = (e as { errno?: unknown }).errno;
  return code === "42501" || code === "42883" || code === "0A000";
}

/**
 * Reads the identity of the server a connection writes to (postgres-outcome-sql.ts IDENTITY).
 * null if this server never lets it be read: said once, as then no COMMIT with no answer can be
 * looked up by its xid, and every such batch is given back as its rows decide (docs/design.md "An
 * outcome that stays unknown"). Any other failure throws: the caller fails now and asks again
 * later, rather than giving up on exact lookups for a passing error.
 */
export function identityReader(st: Statements, log: (level: "warn", message: string) => void) {
  let said = false;
  return async (on: SQL): Promise<string | null> => {
    try {
      return await identity(st, on);
    } catch (e) {
      if (!unreadableForGood(e)) throw e;
      if (!said) {
        said = true;
        log("warn", `Postgres: the server's identity cannot be read (${(e as Error).message}): a COMMIT with no answer cannot be ` +
          "looked up by its transaction id on this server; a batch of unknown outcome is given back as its rows decide (docs/design.md)");
      }
      return null;
    }
  };
}

/**
 * The writable host, refused if older than 14, with its database and the identity of the server
 * its xids belong to (`identityOf`: identityReader).
 */
export async function connectChecked(url: StoreUrl, identityOf: (on: SQL) => Promise<string | null>) {
  const found = await connectPrimary(url);
  try {
    const [row] = await found.sql.unsafe("SELECT current_setting('server_version_num') AS num, current_database() AS database");
    checkVersion(Number(row.num), found.host);
    return { ...found, database: row.database as string, server: await identityOf(found.sql) };
  } catch (e) {
    await found.sql.close().catch(() => {});
    throw e;
  }
}
