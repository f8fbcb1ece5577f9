/**
 * The file that keeps the batches of unknown outcome (postgres-unknown.ts) across a restart of
 * the node, in its data directory, and which store each of them belongs to.
 *
 * An entry names its store by the database itself (its server's system identifier, the database
 * name, the schema: StoreId), not by the URL that reached it: the same database reached through a
 * URL spelled otherwise (localhost for 127.0.0.1, an added option, the hosts in another order) is
 * the same store, and its entries are asked about (review 6 F5). Whether an entry's xid can be
 * looked up exactly is decided apart, by the identity of the server it ran on (Unresolved.server).
 */
import { closeSync, fsyncSync, openSync, readFileSync, renameSync, rmSync, writeSync } from "node:fs";
import { dirname, join } from "node:path";
import type { StoreUrl } from "./postgres-hosts";
import type { Row } from "./postgres-sql";

/**
 * A store: its server's system identifier (null if it cannot be read there), database and schema,
 * and the schema's own identity (mcq_version.store_id, schema version 6; absent in entries
 * written before it).
 */
export interface StoreId {
  system: string | null;
  database: string;
  schema: string;
  id?: string | null;
}

/** A batch whose COMMIT may or may not have landed. */
export interface Unresolved {
  xid: string;
  pid: number;
  /** The server and timeline it ran on (postgres-outcome-sql.ts IDENTITY), null if unknown. */
  server: string | null;
  /** The node whose leases its opens were. */
  node: number;
  /** The store it belongs to; a string in files written before StoreId: the URL without password, and schema. */
  store: StoreId | string;
  taken: Required<Row>[];
  leased: number[];
  /** Take statements that never answered: what they took, if it landed, is not known. */
  unanswered: number;
}

/** This store, as a file's entries are matched against it. */
export interface Here extends StoreId {
  /** The key entries were written with before StoreId: `<URL without password> schema <schema>`. */
  legacy: string;
}

/** This store, from what the node learned at open: the identity of its server, its database, the URL and the schema's identity. */
export function storeHere(server: string | null, database: string, url: StoreUrl, id: string | null): Here {
  return { system: server?.split("/")[0] ?? null, database, schema: url.schema, id, legacy: `${url.safe} schema ${url.schema}` };
}

export const FILE = "postgres-unresolved.json";

/**
 * Whether an entry belongs to this store. Database and schema names must be equal, and so must
 * the schemas' identities and the system identifiers where both are known. The schema's identity
 * is what tells another cluster's schema of the same names (a copied data directory, a staging
 * store) where the system identifier cannot be read (a managed server: review 10b R4); an entry
 * written before it had one (no `id`) falls back on the names and system alone. An entry whose
 * server is unknown is given back as its rows decide (no identity to look its xid up by).
 *
 * An entry written before StoreId has the URL as key. Its database and schema are read from that
 * URL, and its system identifier from its server's identity: so it is migrated to this store's
 * key when that identity's system is this one, and when the identity is unknown the rows decide,
 * as for any entry whose server is unknown. A URL naming no database (Bun.SQL's default then) is
 * this store only if written exactly as now, as before.
 */
export function belongs(u: Unresolved, here: Here): boolean {
  if (typeof u.store === "string") {
    if (u.store === here.legacy) return true;
    const m = /^postgres(?:ql)?:\/\/(?:[^@/]*@)?[^/?#]*\/([^?#]+)(?:\?[^#]*)? schema ([a-z_][a-z0-9_]*)$/.exec(u.store);
    if (m === null) return false;
    let database: string;
    try {
      database = decodeURIComponent(m[1]!);
    } catch {
      return false;
    }
    return same({ system: u.server?.split("/")[0] ?? null, database, schema: m[2]! }, here);
  }
  return same(u.store, here);
}

function same(a: StoreId, b: StoreId): boolean {
  const agree = (x: string | null | undefined, y: string | null | undefined) => x == null || y == null || x === y;
  return a.database === b.database && a.schema === b.schema && agree(a.system, b.system) && agree(a.id, b.id);
}

/**
 * The store an entry of `here` is written with from now on: here's key, with its system and
 * identity where here knows them, the entry's own where here does not (a server whose identity
 * cannot be read must not erase the one the entry had: review 10b R4). A legacy entry's system is
 * its server's.
 */
function rekeyed(u: Unresolved, here: Here): StoreId {
  const was = typeof u.store === "string" ? { system: u.server?.split("/")[0] ?? null, id: null } : u.store;
  return { system: here.system ?? was.system, database: here.database, schema: here.schema, id: here.id ?? was.id ?? null };
}

/** How a store is named in a message. */
export const describeStore = (s: StoreId | string) =>
  typeof s === "string" ? s : `database ${s.database} schema ${s.schema} of system ${s.system ?? "unknown"}${s.id == null ? "" : `, store ${s.id}`}`;

const isInt = (v: unknown) => Number.isSafeInteger(v);
const isNum = (v: unknown) => typeof v === "number" && Number.isFinite(v);
const isText = (v: unknown) => typeof v === "string";
const maybe = (ok: (v: unknown) => boolean) => (v: unknown) => v === null || v === undefined || ok(v);
/** A taken row's fields as Required<Row> has them (the body as base64), each with its check. */
const ROW: [string, (v: unknown) => boolean][] = [
  ["id", isInt], ["queue", isText], ["flags", isNum], ["expires", isNum], ["created", isNum], ["deliveries", isInt],
  ["body", (v) => isText(v) && /^[A-Za-z0-9+/]*={0,2}$/.test(v as string)],
];
const isStore = (v: unknown) =>
  isText(v) || (typeof v === "object" && v !== null && isText((v as StoreId).database) && isText((v as StoreId).schema) &&
    maybe(isText)((v as StoreId).system) && maybe(isText)((v as StoreId).id));

/**
 * Why an entry of the file is not one mcq writes (null: it is): an entry that parses but is wrong
 * (an xid that is not a number, a row without its fields) would fail every ask, once a second for
 * ever, and its give-back with it (review 10b R5).
 */
export function shape(u: unknown): string | null {
  if (typeof u !== "object" || u === null || Array.isArray(u)) return "not an object";
  const e = u as Record<string, unknown>;
  if (!(isText(e.xid) && /^\d{1,20}$/.test(e.xid as string))) return `xid ${JSON.stringify(e.xid)} is not a transaction id`;
  for (const [k, ok] of [["pid", isInt], ["node", isInt], ["unanswered", isInt], ["server", maybe(isText)], ["store", isStore]] as const) {
    if (!ok(e[k])) return `transaction ${e.xid}: ${k} ${JSON.stringify(e[k]) ?? "missing"} is not valid`;
  }
  if (!Array.isArray(e.leased) || !e.leased.every(isInt)) return `transaction ${e.xid}: leased is not a list of message ids`;
  if (!Array.isArray(e.taken)) return `transaction ${e.xid}: taken is not a list of rows`;
  for (const r of e.taken as unknown[]) {
    const bad = typeof r !== "object" || r === null ? "" : ROW.find(([k, ok]) => !ok((r as Record<string, unknown>)[k]))?.[0];
    if (bad !== undefined) return `transaction ${e.xid}: a taken row${bad === "" ? " is not an object" : `'s ${bad} is not valid`}`;
  }
  return null;
}

/** Makes a rename in `dir` durable. */
function syncDir(dir: string): void {
  const fd = openSync(dir, "r");
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/**
 * The file of `home` (null: none, memory only). `fileCap`: its bound in bytes (FILE_CAP: about
 * 12 MiB of bodies, written in about 0.3 s on a loaded 2-core machine, measured 25 ms per MiB; the
 * event loop waits meanwhile).
 */
export function unknownFile(home: string | null, here: Here, log: (level: "info" | "warn", message: string) => void, fileCap = 16 << 20) {
  const file = home === null ? null : join(home, FILE);
  /**
   * Entries found in the file that are not asked about here, as read: another store's (the
   * directory was started with another --store) and those not well formed (shape). Written back
   * first, untouched: they cannot be asked about here, so memory is no help to them, and this
   * store's entries past the bound must not push them out (review 10b R3).
   */
  let aside: Buffer[] = [];
  const texts = new WeakMap<Unresolved, Buffer>();

  /** What a node killed on this directory left unresolved (its bodies as base64), this store's. */
  function load(): Unresolved[] {
    if (file === null) return [];
    let text: string;
    try {
      text = readFileSync(file, "utf8");
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") return []; // none: the usual case
      log("warn", `Postgres: cannot read ${file}: ${(e as Error).message}; the batches it names are not asked about`);
      return [];
    }
    try {
      const parsed: unknown = JSON.parse(text);
      if (!Array.isArray(parsed)) throw new Error("not a list");
      const bad = parsed.map((u) => [u, shape(u)] as const).filter(([, why]) => why !== null);
      if (bad.length > 0) {
        log("warn", `Postgres: ${file} names ${bad.length} entries that are not batches of unknown outcome as mcq writes them (the first: ${bad[0]![1]}): ` +
          "left in it as they are, never asked about");
      }
      const all = parsed.filter((u) => shape(u) === null) as Unresolved[];
      for (const u of all) for (const r of u.taken) r.body = Buffer.from(r.body as unknown as string, "base64");
      const others = all.filter((u) => !belongs(u, here));
      if (others.length > 0) log("warn", `Postgres: ${file} names ${others.length} batches of unknown outcome of another store (${describeStore(others[0]!.store)}): left as they are`);
      aside = [...others.map(encoded), ...bad.map(([u]) => Buffer.from(JSON.stringify(u)))];
      const kept = all.filter((u) => belongs(u, here));
      for (const u of kept) u.store = rekeyed(u, here);
      if (kept.length > 0) log("warn", `Postgres: ${kept.length} batches of this directory's previous node have an unknown outcome: asking again`);
      return kept;
    } catch (e) {
      // Not overwritten by the next keep: moved aside for an operator to read (docs/design.md).
      const aside = `${file}.corrupt-${Date.now()}`;
      log("warn", `Postgres: ${file} is corrupt (${(e as Error).message}): moved to ${aside}; the batches it names are not asked about`);
      try {
        renameSync(file, aside);
      } catch (e2) {
        log("warn", `Postgres: cannot move ${file} aside: ${(e2 as Error).message}`);
      }
      return [];
    }
  }

  /**
   * Writes `list` (synchronously: before the SERVER_ERROR leaves). Each entry is encoded once
   * (bodies as base64: JSON of a Buffer is an array of numbers, 5x the bytes and slow), and the
   * file holds entries up to `fileCap` bytes: one past it is kept in memory only, so that a batch
   * of large messages does not block the event loop for seconds. Returns the entries left out.
   */
  function save(list: Unresolved[]): Unresolved[] {
    if (file === null) return [];
    if (list.length + aside.length === 0) {
      rmSync(file, { force: true });
      return [];
    }
    const parts: Buffer[] = [...aside];
    const left: Unresolved[] = [];
    let size = aside.reduce((n, bytes) => n + bytes.length + 1, 2);
    for (const u of list) {
      // Its bodies' base64 alone past the bound: not even encoded (that alone took seconds for 64 MiB).
      if (size + u.taken.reduce((n, r) => n + Math.ceil(r.body.byteLength / 3) * 4, 0) > fileCap) {
        left.push(u);
        continue;
      }
      const bytes = encoded(u);
      if (size + bytes.length + 1 > fileCap) left.push(u);
      else parts.push(bytes), (size += bytes.length + 1);
    }
    // Written in parts (one string of them all costs more than the encoding) and synced, file and
    // directory: the list must outlive a crash of the machine, as the batches it names may have.
    const fd = openSync(`${file}.tmp`, "w");
    try {
      parts.forEach((bytes, i) => {
        writeSync(fd, i === 0 ? "[" : ",");
        writeSync(fd, bytes);
      });
      writeSync(fd, parts.length === 0 ? "[]" : "]");
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(`${file}.tmp`, file);
    syncDir(dirname(file));
    return left;
  }

  /** An entry as JSON, its bodies as base64; encoded once (every keep and settle writes the list). */
  function encoded(u: Unresolved): Buffer {
    let bytes = texts.get(u);
    if (bytes === undefined) {
      const taken = u.taken.map((r) => ({ ...r, body: Buffer.from(r.body.buffer, r.body.byteOffset, r.body.byteLength).toString("base64") }));
      texts.set(u, (bytes = Buffer.from(JSON.stringify({ ...u, taken }))));
    }
    return bytes;
  }

  return { path: file, fileCap, load, save };
}
