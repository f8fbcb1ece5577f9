/**
 * The `--store` URL and finding the writable Postgres. Bun.SQL takes one host; a URL may name
 * several (libpq style: `postgres://u:p@h1:5432,h2:5433/db`), so mcq asks them all and keeps
 * the one that is neither in recovery nor read-only: the primary (choosePrimary: the newest
 * timeline if an old primary is back beside it). After a failover the same walk finds the
 * promoted standby.
 *
 * `schema=<name>` in the query string is mcq's own: the store's tables live in that schema
 * (created if missing) instead of `public`, so that several mcq clusters, or tests, share one
 * database. Other query parameters go to Bun.SQL as they are.
 *
 * The password never appears in a message: `safe` is the URL without it (neither the user info's
 * nor a `password=` or `sslpassword=` query parameter).
 */
import { randomBytes } from "node:crypto";
import { SQL } from "bun";
import type { Statements } from "./postgres-sql";
import { StoreError } from "./store";
import { within } from "../within";

export interface StoreUrl {
  /** One URL per host, in the order given, each complete (user, password, database, options). */
  hosts: string[];
  /** The schema holding mcq's tables. */
  schema: string;
  /** The URL for messages: no password. */
  safe: string;
}

const SCHEMA_NAME = /^[a-z_][a-z0-9_]*$/;
/** `mcq_<schema>` is the NOTIFY channel (postgres.ts), and Postgres limits a channel to 63 bytes. */
const SCHEMA_MAX = 63 - "mcq_".length;

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
  if (schema.length > SCHEMA_MAX) {
    throw new Error(`--store: schema '${schema}' is ${schema.length} characters; at most ${SCHEMA_MAX} (mcq_<schema> names its NOTIFY channel, at most 63 bytes)`);
  }
  params.delete("schema");
  const search = (p: URLSearchParams) => (p.size === 0 ? "" : `?${p.toString()}`);
  const tail = (path ?? "") + search(params);
  const user = auth === undefined ? "" : `${auth}@`;
  const safeUser = auth === undefined ? "" : `${auth.split(":")[0]}@`;
  // Bun.SQL takes a password from the query string too, in any case (PASSWORD=): never in a message.
  const shown = new URLSearchParams([...params].filter(([k]) => !["password", "sslpassword"].includes(k.toLowerCase())));
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

/**
 * Whether a host takes writes, as libpq's target_session_attrs=read-write asks: a primary fenced
 * read-only (default_transaction_read_only = on, as managed services do when its disk is nearly
 * full, or an old primary set aside) is not writable either: every batch would fail there.
 */
export const WRITABLE = "SELECT pg_is_in_recovery() AS standby, current_setting('transaction_read_only')::bool AS readonly";

/** Seconds to wait for one host to accept a connection. */
const CONNECT_TIMEOUT_S = 3;
/** Default bound of a probe's questions (connectPrimary): the Postgres store's batch timeout (main.ts). */
const PROBE_BOUND_MS = 5000;

/** WRITABLE, and which server a writable host is: its system identifier and current timeline. */
const PROBE = `SELECT pg_is_in_recovery() AS standby, current_setting('transaction_read_only')::bool AS readonly,
  pg_postmaster_start_time()::text AS started,
  CASE WHEN pg_is_in_recovery() THEN 0 ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END AS timeline`;

/** A writable host as the walk found it. */
export interface Candidate {
  label: string;
  system: string;
  timeline: number;
  /** The postmaster's start: with the same system and timeline, the same server under two names. */
  started: string;
}

/** What a node's walks remember: the newest server it wrote to, and where an ERROR goes. */
export interface Walk {
  seen: { system: string; timeline: number } | null;
  error(line: string): void;
  /**
   * Called when a connection the walk made closes (the server ended it, or it was closed). Bun.SQL
   * would connect it again by itself on its next query, to the same host and with no walk: an idle
   * node would go back to an old primary that restarted unfenced (review 10a M3). postgres.ts
   * replaces the connection instead.
   */
  closed(sql: SQL): void;
}

export const newWalk = (error: (line: string) => void = (line) => console.error(`mcq: ${line}`), closed: (sql: SQL) => void = () => {}): Walk =>
  ({ seen: null, error, closed });

/**
 * Which writable host to use. Normally there is one. Two are a split brain: an old primary came
 * back as a primary beside the standby promoted in its place (nothing fenced it), and nodes that
 * picked by list order would write to both, each message visible to half of them, some delivered
 * twice. Of one cluster (system identifier), the promoted one has the higher timeline: it wins, and
 * an ERROR names both. A host on a timeline older than one this node wrote to is never used: it
 * lacks what the node wrote there. Returns the index chosen (or null), the reasons for the others
 * refused, and the ERROR line if any.
 */
export function choosePrimary(found: Candidate[], seen: Walk["seen"]): { pick: number | null; refused: string[]; split: string | null } {
  const refused: string[] = [];
  // "" is a system not known (systemOf): compared only when both are known, so that a GRANT or
  // REVOKE of pg_control_system() does not turn the node's own server into another (review 10a M2).
  const system = seen?.system || found.find((c) => c.system !== "")?.system || "";
  const same = (c: Candidate) => c.system === "" || system === "" || c.system === system;
  const fit: number[] = [];
  // Refused for as long as the process runs: a restart is what accepts it (README, Scaling out).
  found.forEach((c, i) => {
    if (!same(c)) {
      refused.push(`${c.label}: another cluster (system identifier ${c.system}, not ${system}` +
        (seen?.system ? " this node wrote to): if it replaced that one, restart mcq to accept it" : ")"));
    }
    else if (seen !== null && c.timeline < seen.timeline) {
      refused.push(`${c.label}: timeline ${c.timeline}, older than timeline ${seen.timeline} this node wrote to: if it is to be used all the same (rewound, or the newer one lost), restart mcq to accept it`);
    } else fit.push(i);
  });
  let pick: number | null = null;
  for (const i of fit) if (pick === null || found[i]!.timeline > found[pick]!.timeline) pick = i;
  // The chosen one first; the same server under two names (same system, timeline and start) is one.
  const servers = (pick === null ? [] : [pick]).concat(fit, found.flatMap((c, i) => (same(c) && !fit.includes(i) ? [i] : [])))
    .filter((i, k, all) => all.findIndex((j) => found[j]!.timeline === found[i]!.timeline && found[j]!.started === found[i]!.started) === k);
  if (servers.length < 2) return { pick, refused, split: null };
  const named = servers.map((i) => `${found[i]!.label} (timeline ${found[i]!.timeline})`);
  const others = servers.filter((i) => i !== pick).map((i) => found[i]!.label);
  const split = pick === null
    ? `Postgres: split brain: ${named.join(" and ")} take writes, on timelines older than the one this node wrote to; writing to none of them`
    : `Postgres: split brain: ${named.join(" and ")} both take writes; writing to ${found[pick]!.label}, the newest timeline; ` +
      `${others.join(", ")} must be fenced or rewound (pg_rewind) before it rejoins`;
  return { pick, refused, split };
}

/**
 * The server's system identifier, or "" where the role may not read it (pg_control_system()
 * revoked from PUBLIC, as on a managed server: identityReader): then every host counts as one
 * cluster, and the timeline alone decides.
 */
const systemOf = (sql: SQL): Promise<string> =>
  sql.unsafe("SELECT system_identifier::text AS s FROM pg_control_system()").then((r) => r[0].s as string, (e) => (unreadableForGood(e) ? "" : Promise.reject(e)));

/**
 * Each connection's application_name, unique: its backend can be found, and ended, by pid and
 * name where the server's identity cannot be read (postgres-outcome-sql.ts end): a pid alone may
 * be another server's backend after a failover.
 */
const names = new WeakMap<SQL, string>();
export const nameOf = (sql: SQL | null): string | null => (sql === null ? null : names.get(sql) ?? null);

/** A host URL as the log shows it: host and port, no user or password. */
const labelOf = (host: string) => host.replace(/\/\/[^@/]*@/, "//").replace(/^postgres(ql)?:\/\//, "").replace(/[/?].*$/, "");

/** Once a writable host has answered, how long the walk waits for the others (ms). */
const GRACE_MS = 1000;

type Probed = { sql: SQL; url: string; c: Candidate } | { reason: string };

/**
 * Connects to one host and asks whether it takes writes, and which server it is. `boundMs`: how
 * long its questions may go unanswered. The connect timeout ends a host that accepts the
 * connection and then says nothing only until it has answered the startup: one that stops after
 * it (a partition without a reset, a frozen server) would keep the walk, and the node's reconnect
 * with it, pending until TCP gives up (review 8 R3).
 */
async function probe(host: string, boundMs: number, closed: (sql: SQL) => void = () => {}): Promise<Probed> {
  const label = labelOf(host);
  const name = `mcq ${randomBytes(6).toString("hex")}`;
  const sql: SQL = new SQL(host, {
    max: 1,
    connectionTimeout: CONNECT_TIMEOUT_S,
    idleTimeout: 0,
    onclose: () => closed(sql),
    connection: { application_name: name },
  });
  names.set(sql, name);
  const ask = <T>(work: Promise<T>) => within(work, boundMs, () => new StoreError(`no answer within ${boundMs} ms`));
  try {
    const [row] = await ask(sql.unsafe(PROBE).execute());
    if (!(row.standby || row.readonly)) return { sql, url: host, c: { label, system: await ask(systemOf(sql)), timeline: Number(row.timeline), started: row.started } };
    await sql.close();
    return { reason: `${label}: ${row.standby ? "a standby" : "read-only (default_transaction_read_only)"}` };
  } catch (e) {
    await sql.close({ timeout: 0 }).catch(() => {}); // a question may be pending: not waited for
    return { reason: `${label}: ${(e as Error).message}` };
  }
}

/**
 * Connects to the writable host of the list (choosePrimary); throws StoreError naming what each
 * host said. Every host is asked, at once: a split brain is seen only by asking them all; the
 * walk waits for the slowest host, or a second more once one that takes writes has answered (gather). The returned client has
 * one connection, used for everything but LISTEN (store.ts says why). `boundMs`: see probe (the
 * store's batch timeout; the tools bound their whole connect themselves).
 */
export async function connectPrimary(url: StoreUrl, walk: Walk = newWalk(), boundMs = PROBE_BOUND_MS): Promise<{ sql: SQL; host: string; url: string }> {
  const fits = (c: Candidate) => choosePrimary([c], walk.seen).pick !== null;
  const probed = await gather(url.hosts, (h) => probe(h, boundMs, walk.closed), Math.min(GRACE_MS, boundMs), fits);
  const writable = probed.filter((p) => "c" in p);
  const { pick, refused, split } = choosePrimary(writable.map((p) => p.c), walk.seen);
  if (split !== null) walk.error(split);
  for (const [i, p] of writable.entries()) if (i !== pick) await p.sql.close().catch(() => {});
  if (pick === null) {
    const reasons = [...probed.flatMap((p) => ("reason" in p ? [p.reason] : [])), ...refused];
    throw new StoreError(`Postgres: no writable host (${reasons.join("; ")})`);
  }
  const { sql, url: hostUrl, c } = writable[pick]!;
  const seen = walk.seen;
  if (seen === null || c.timeline > seen.timeline) walk.seen = { system: c.system || (seen?.system ?? ""), timeline: c.timeline };
  else if (seen.system === "") seen.system = c.system; // now readable
  return { sql, host: c.label, url: hostUrl };
}

/**
 * Every host's answer, or, once a host the walk would take has answered (`fits`: writable, of the
 * cluster and not on an older timeline than the node wrote to: review 11b F2), those that came within
 * `graceMs` after it: a host that answers the startup and then nothing (review 11a F3) would
 * otherwise cost every walk the whole bound. A split brain with a host that answers late is seen
 * by the next check of the hosts (postgres-watch.ts). One that comes later is closed.
 */
export async function gather(hosts: string[], ask: (host: string) => Promise<Probed>, graceMs: number, fits: (c: Candidate) => boolean): Promise<Probed[]> {
  const got: (Probed | undefined)[] = hosts.map(() => undefined);
  let timer: ReturnType<typeof setTimeout> | undefined;
  let graceOver!: () => void;
  const grace = new Promise<void>((ok) => (graceOver = ok));
  const asked = hosts.map((h, i) =>
    ask(h).then((p) => {
      got[i] = p;
      if ("c" in p && fits(p.c) && timer === undefined) timer = setTimeout(graceOver, graceMs);
      return p;
    }),
  );
  await Promise.race([Promise.all(asked), grace]);
  clearTimeout(timer);
  return got.map((p, i) => {
    if (p !== undefined) return p;
    void asked[i]!.then((late) => {
      if ("c" in late) void late.sql.close({ timeout: 0 }).catch(() => {});
    });
    return { reason: `${labelOf(hosts[i]!)}: no answer within ${graceMs} ms of another host's` };
  });
}

/**
 * The writable hosts of the list now, each asked on a connection of its own, closed at once: what
 * a node that keeps its connection checks now and then (postgres-watch.ts). Bounded as a walk is.
 */
export async function survey(url: StoreUrl, boundMs = PROBE_BOUND_MS): Promise<Candidate[]> {
  const probed = await Promise.all(url.hosts.map((h) => probe(h, boundMs)));
  return probed.flatMap((p) => {
    if (!("c" in p)) return [];
    void p.sql.close({ timeout: 0 }).catch(() => {});
    return [p.c];
  });
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
export async function connectChecked(url: StoreUrl, identityOf: (on: SQL) => Promise<string | null>, walk: Walk | undefined, boundMs: number) {
  const found = await connectPrimary(url, walk, boundMs);
  const ask = <T>(work: Promise<T>) => within(work, boundMs, () => new StoreError(`Postgres: ${found.host}: no answer within ${boundMs} ms`));
  try {
    const [row] = await ask(found.sql.unsafe("SELECT current_setting('server_version_num') AS num, current_database() AS database").execute());
    checkVersion(Number(row.num), found.host);
    return { ...found, database: row.database as string, server: await ask(identityOf(found.sql)) };
  } catch (e) {
    await found.sql.close({ timeout: 0 }).catch(() => {});
    throw e;
  }
}
