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

/** `url` (a store URL) as `role`, with no password. */
export function asRole(url: string, role: string): string {
  const u = new URL(url);
  u.username = role;
  u.password = "";
  return u.toString();
}

/** Version 1 of mcq's schema as it shipped, empty, in `schema` (made here); search_path is left on it. */
export async function schemaV1(sql: SQL, schema: string): Promise<void> {
  await sql.unsafe(`CREATE SCHEMA ${schema}; SET search_path TO ${schema};
    CREATE TABLE mcq_version (version integer NOT NULL); INSERT INTO mcq_version VALUES (1);
    CREATE TABLE mcq_messages (id bigserial PRIMARY KEY, queue text NOT NULL, flags bigint NOT NULL, created bigint NOT NULL,
      expires bigint NOT NULL, owner integer, body bytea NOT NULL);
    CREATE INDEX mcq_messages_head ON mcq_messages (queue, id) WHERE owner IS NULL;
    CREATE TABLE mcq_counters (queue text NOT NULL, node integer NOT NULL, total bigint NOT NULL DEFAULT 0,
      fetched bigint NOT NULL DEFAULT 0, items bigint NOT NULL DEFAULT 0, bytes bigint NOT NULL DEFAULT 0,
      open bigint NOT NULL DEFAULT 0, expired bigint NOT NULL DEFAULT 0, PRIMARY KEY (queue, node));
    CREATE TABLE mcq_nodes (id serial PRIMARY KEY, started timestamptz NOT NULL DEFAULT now(), heartbeat timestamptz NOT NULL DEFAULT now());`).simple();
}

/** Drops the schemas the tests made. */
export async function dropSchemas(schemas: string[]): Promise<void> {
  if (PG_URL === null || schemas.length === 0) return;
  const sql = new SQL(PG_URL, { max: 1 });
  for (const s of schemas) await sql.unsafe(`DROP SCHEMA IF EXISTS ${s} CASCADE`).catch(() => {});
  await sql.close();
}

/**
 * A TCP relay to PG_URL's server that passes bytes both ways at once, but a client's close only
 * `closeDelayMs` later: a network where the end of a connection reaches Postgres late (a FIN
 * crossing a WAN, a lost packet), while the backend may still read what came before it.
 */
export function lateCloseRelay(closeDelayMs: number) {
  const target = new URL(PG_URL!);
  type Side = { peer: import("bun").Socket<Side> | null; queued: Uint8Array[]; closed: boolean };
  const pass = (to: import("bun").Socket<Side> | null, bytes: Uint8Array, from: Side) => {
    if (to === null) return void from.queued.push(bytes.slice());
    const n = to.write(bytes);
    if (n < bytes.length) to.data.queued.push(bytes.slice(n)); // written on drain
  };
  const drain = (s: import("bun").Socket<Side>) => {
    while (s.data.queued.length > 0) {
      const b = s.data.queued.shift()!;
      const n = s.write(b);
      if (n < b.length) return void s.data.queued.unshift(b.slice(n));
    }
  };
  const relay = Bun.listen<Side>({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      open(client) {
        client.data = { peer: null, queued: [], closed: false };
        void Bun.connect<Side>({
          hostname: target.hostname,
          port: Number(target.port || 5432),
          socket: {
            open(up) {
              up.data = { peer: client, queued: client.data.queued.splice(0), closed: false };
              client.data.peer = up;
              drain(up);
              if (client.data.closed) setTimeout(() => up.end(), closeDelayMs);
            },
            data: (up, bytes) => pass(up.data.peer, bytes, up.data),
            drain,
            close: (up) => void up.data.peer?.end(),
          },
        }).catch(() => client.end());
      },
      data: (client, bytes) => pass(client.data.peer, bytes, client.data),
      drain,
      close(client) {
        client.data.closed = true;
        const up = client.data.peer;
        if (up !== null) setTimeout(() => up.end(), closeDelayMs);
      },
    },
  });
  return {
    /** The store URL for `schema`, through the relay. */
    url(schema: string) {
      const u = new URL(pgStoreUrl(schema));
      u.host = `127.0.0.1:${relay.port}`;
      return u.toString();
    },
    stop: () => relay.stop(true),
  };
}
