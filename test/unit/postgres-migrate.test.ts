/**
 * A migration that alters a table waits for its lock a bounded time (review 8 R4): behind a
 * holder of a lock on mcq_messages (a REINDEX CONCURRENTLY, a long transaction), it gives up,
 * undone, and says why, instead of waiting for ever at the head of every node's queue of lockers.
 */
import { SQL } from "bun";
import { afterAll, describe, expect, test } from "bun:test";
import { migrate, SCHEMA_VERSION } from "../../src/store/postgres-schema";
import { dropSchemas, freshSchema, havePostgres, PG_URL, schemaV1 } from "../pg";

const schemas: string[] = [];

if (havePostgres("postgres migrations")) {
  afterAll(() => dropSchemas(schemas));

  describe("postgres migrations", () => {
    test("a schema named by a keyword Postgres reserves is refused, saying why, before anything is made (it failed later with a syntax error)", async () => {
      const sql = new SQL(PG_URL!, { max: 1 });
      for (const name of ["grant", "user", "order"]) {
        expect(await migrate(sql, name).then(() => "made", (e: Error) => e.message)).toBe(
          `the schema name ${name} is a keyword Postgres reserves: choose another (?schema=<name>)`,
        );
        expect((await sql.unsafe("SELECT count(*)::int AS n FROM pg_namespace WHERE nspname = $1", [name]))[0].n).toBe(0);
      }
      await sql.close();
    });

    test("a 1 -> 2 migration behind a lock holder on mcq_messages gives up after its tries, changing nothing; then migrates once the lock is gone", async () => {
      const schema = freshSchema("mig");
      schemas.push(schema);
      const sql = new SQL(PG_URL!, { max: 1 });
      const holder = new SQL(PG_URL!, { max: 1 });
      const reader = new SQL(PG_URL!, { max: 1 });
      // Version 1 as it shipped, with one message.
      await schemaV1(sql, schema);
      await sql.unsafe(`INSERT INTO mcq_messages (queue, flags, created, expires, body) VALUES ('old', 0, 1, 0, 'kept');`).simple();
      // What REINDEX CONCURRENTLY holds while it rebuilds.
      await holder.unsafe("BEGIN");
      await holder.unsafe(`LOCK TABLE ${schema}.mcq_messages IN SHARE UPDATE EXCLUSIVE MODE`);
      const t0 = performance.now();
      const migrating = migrate(sql, schema, 300).then(() => null, (e: Error) => e.message);
      // Meanwhile a reader of mcq_messages (every node's statements) gets through between the tries.
      expect((await reader.unsafe(`SELECT count(*)::int AS n FROM ${schema}.mcq_messages`))[0].n).toBe(1);
      expect(await migrating).toBe(
        `cannot migrate the Postgres schema ${schema} to version ${SCHEMA_VERSION}: a lock on its tables was not granted within 300 ms, ` +
          "3 times (another session holds one: a REINDEX, a long transaction, a dump; see pg_locks); nothing was changed: start mcq again once it has ended",
      ); // before: no answer while the holder held (test timeout)
      const took = performance.now() - t0;
      expect(took).toBeGreaterThanOrEqual(900);
      expect(took).toBeLessThan(4000);
      expect((await sql.unsafe(`SELECT version FROM ${schema}.mcq_version`))[0].version).toBe(1);
      await holder.unsafe("COMMIT");
      await migrate(sql, schema, 300);
      expect((await sql.unsafe(`SELECT version FROM ${schema}.mcq_version`))[0].version).toBe(SCHEMA_VERSION);
      expect((await sql.unsafe(`SELECT deliveries FROM ${schema}.mcq_messages`))[0].deliveries).toBe(0);
      await Promise.all([sql.close(), holder.close(), reader.close()]);
    });

    test("5 -> 6: the schema gets an identity of its own, written once; every node's row holds its lease", async () => {
      const [a, b] = [freshSchema("mig"), freshSchema("mig")];
      schemas.push(a, b);
      const sql = new SQL(PG_URL!, { max: 1 });
      const first = await migrate(sql, a);
      expect(first).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
      expect(await migrate(sql, a)).toBe(first); // a second node reads the same
      expect(await migrate(sql, b)).not.toBe(first);
      // A schema of version 5 (as it shipped: without the two columns), with an older node's row: migrated, row kept, lease unknown.
      await sql.unsafe(`SET search_path TO ${b}; ALTER TABLE mcq_version DROP COLUMN store_id; ALTER TABLE mcq_nodes DROP COLUMN lease_s;
        UPDATE mcq_version SET version = 5; INSERT INTO mcq_nodes DEFAULT VALUES;`).simple();
      const made = await migrate(sql, b);
      expect(made).not.toBe(first);
      expect(await migrate(sql, b)).toBe(made);
      expect(await sql.unsafe(`SELECT version, store_id::text AS id FROM ${b}.mcq_version`)).toEqual([{ version: SCHEMA_VERSION, id: made }]);
      expect(await sql.unsafe(`SELECT lease_s FROM ${b}.mcq_nodes`)).toEqual([{ lease_s: null }]);
      await sql.close();
    });
  });
}
