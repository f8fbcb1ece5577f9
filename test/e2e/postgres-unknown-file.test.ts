/**
 * The file of batches of unknown outcome a data directory keeps (postgres-unresolved.json,
 * postgres-unknown-file.ts), read by a real node on a real Postgres (MCQ_TEST_PG) whose role may
 * not read the server's identity (pg_control_system() revoked from PUBLIC, as on a managed
 * server): the schema's own identity (mcq_version.store_id) tells its entries from another
 * cluster's of the same database and schema names (review 10b R4).
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { SQL } from "bun";
import { randomUUID } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { asRole, dropSchemas, freshSchema, havePostgres, PG_URL, pgStoreUrl } from "../pg";
import { set, startServer, stopAll, tempDir, value, type Running } from "./harness";

const schemas: string[] = [];
const ROLE = `mcq_ufile_${process.pid}`;
const DATABASE = new URL(PG_URL ?? "postgres://x/postgres").pathname.slice(1) || "postgres";

/** The store URL for `schema`, as ROLE. */
const storeUrl = (schema: string) => asRole(pgStoreUrl(schema), ROLE);

/** An entry as a node writes it: one taken row of queue q. */
const entry = (xid: string, store: object, id: number, body: string) => ({
  xid, pid: 4242, server: null, node: 1, store, leased: [], unanswered: 0,
  taken: [{ id, queue: "q", flags: 0, expires: 0, body: Buffer.from(body).toString("base64"), created: 1, deliveries: 0 }],
});

async function logged(server: Running, line: string): Promise<void> {
  for (const deadline = Date.now() + 15_000; !server.stderr().includes(line); ) {
    if (Date.now() > deadline) throw new Error(`never logged ${JSON.stringify(line)}:\n${server.stderr()}`);
    await Bun.sleep(20);
  }
}

if (havePostgres("e2e postgres unresolved file")) {
  const admin = new SQL(PG_URL!, { max: 1 });
  beforeAll(async () => {
    await admin.unsafe(`CREATE ROLE ${ROLE} LOGIN`);
    await admin.unsafe(`GRANT CREATE ON DATABASE ${DATABASE} TO ${ROLE}`);
    await admin.unsafe("REVOKE EXECUTE ON FUNCTION pg_control_system() FROM PUBLIC");
  });
  afterAll(async () => {
    await stopAll();
    await admin.unsafe("GRANT EXECUTE ON FUNCTION pg_control_system() TO PUBLIC");
    await dropSchemas(schemas);
    await admin.unsafe(`DROP OWNED BY ${ROLE}`).catch(() => {});
    await admin.unsafe(`DROP ROLE IF EXISTS ${ROLE}`).catch(() => {});
    await admin.close();
  });

  /** A store made by a node of ROLE on a fresh directory, which holds m0 in queue q, then stopped cleanly; its store_id. */
  async function made(): Promise<{ schema: string; home: string; storeId: string }> {
    const schema = freshSchema("ufile");
    schemas.push(schema);
    const home = join(tempDir(), "data");
    const first = await startServer(["--store", storeUrl(schema)], home);
    const c = await first.connect();
    expect(await c.call(set("q", "m0"))).toBe("STORED\r\n");
    c.close();
    expect(await first.kill("SIGTERM")).toBe(0);
    const [{ id }] = await admin.unsafe(`SELECT store_id::text AS id FROM ${schema}.mcq_version`);
    return { schema, home, storeId: id as string };
  }

  describe("entries matched to their store where the server's identity cannot be read", () => {
    test("another cluster's entry of the same database and schema names is left alone in the file; this store's is given back", async () => {
      const { schema, home, storeId } = await made();
      const file = join(home, "postgres-unresolved.json");
      // A staging cluster's entry (a copied data directory): same names, its own system and store.
      const other = randomUUID();
      const staging = entry("77", { system: "7000000000000000001", database: DATABASE, schema, id: other }, 50, "staging");
      const mine = entry("78", { system: null, database: DATABASE, schema, id: storeId }, 60, "mine");
      writeFileSync(file, JSON.stringify([staging, mine]));
      const server = await startServer(["--store", storeUrl(schema)], home);
      await logged(server, "transaction 78 cannot be asked about on this server (unknown server): gave back 1 messages taken and 0 opened");
      expect(server.stderr()).toContain(
        `WARN Postgres: ${file} names 1 batches of unknown outcome of another store (database ${DATABASE} schema ${schema} of system 7000000000000000001, store ${other}): left as they are`,
      );
      const c = await server.connect();
      // Before: the staging entry belonged by its names, and "staging" was given back into q here too.
      expect(await c.call("get q\r\nget q\r\nget q\r\n")).toBe(value("q", "m0") + "END\r\n" + value("q", "mine") + "END\r\nEND\r\n");
      expect(JSON.parse(readFileSync(file, "utf8"))).toEqual([staging]);
      expect(server.stderr()).not.toContain("transaction 77");
      c.close();
      expect(await server.kill("SIGTERM")).toBe(0);
    }, 40_000);
  });

  describe("entries that parse but are not as mcq writes them (review 10b R5)", () => {
    test("an xid that is not a number, a row with a null field: said once naming the file, never asked about, kept in the file; the good entry is given back", async () => {
      const { schema, home, storeId } = await made();
      const file = join(home, "postgres-unresolved.json");
      const store = { system: null, database: DATABASE, schema, id: storeId };
      const badXid = entry("abc", store, 70, "bad xid");
      const badRow = entry("79", store, 71, "bad row");
      (badRow.taken[0] as Record<string, unknown>).queue = null;
      const good = entry("80", store, 72, "good");
      writeFileSync(file, JSON.stringify([badXid, badRow, good]));
      const server = await startServer(["--store", storeUrl(schema)], home);
      await logged(server, "transaction 80 cannot be asked about on this server (unknown server): gave back 1 messages taken and 0 opened");
      const said = `WARN Postgres: ${file} names 2 entries that are not batches of unknown outcome as mcq writes them ` +
        `(the first: xid "abc" is not a transaction id): left in it as they are, never asked about`;
      expect(server.stderr()).toContain(said);
      expect(server.stderr()).toContain("WARN Postgres: 1 batches of this directory's previous node have an unknown outcome: asking again");
      const c = await server.connect();
      expect(await c.call("get q\r\nget q\r\nget q\r\n")).toBe(value("q", "m0") + "END\r\n" + value("q", "good") + "END\r\nEND\r\n");
      c.close();
      // A clean stop asks about what is left: before, both were asked every second and failed,
      // and the stop said "stopping with 2 batches of unknown outcome (transactions abc, 79)".
      expect(await server.kill("SIGTERM")).toBe(0);
      expect(server.stderr()).not.toContain("stopping with");
      expect(server.stderr()).not.toContain("transaction abc");
      expect(server.stderr().split(file).length - 1).toBe(1);
      expect(JSON.parse(readFileSync(file, "utf8"))).toEqual([badXid, badRow]);
    }, 40_000);
  });
}
