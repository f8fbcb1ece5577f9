/**
 * The failure path (batch.ts) on a real Postgres store: a batch that fails in Postgres is undone in
 * the store's own state exactly once, whichever reaches batch.fail() first (a take's rejection or
 * the batch's own outcome), and never a committed or healthy batch with it. The failure is real:
 * a trigger makes one queue's inserts fail in Postgres.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { SQL } from "bun";
import { createBatch } from "../../src/batch";
import { openPostgresStore, type PostgresStore } from "../../src/store/postgres";
import { dropSchemas, freshSchema, havePostgres, pgStoreUrl, PG_URL } from "../pg";

const schemas: string[] = [];
const options = { leaseS: 30, timeoutMs: 5000, log: () => {}, home: null };
const body = new Uint8Array([1, 2, 3]);

/** A store on a fresh schema whose inserts into queue `boom` fail in Postgres. */
async function storeWithBoom(): Promise<{ store: PostgresStore; sql: SQL; schema: string }> {
  const schema = freshSchema("bpg");
  schemas.push(schema);
  const store = await openPostgresStore(pgStoreUrl(schema), options);
  const sql = new SQL(PG_URL!, { max: 1 });
  await sql.unsafe(`CREATE FUNCTION ${schema}.boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'boom'; END $$`);
  await sql.unsafe(
    `CREATE TRIGGER boom BEFORE INSERT ON ${schema}.mcq_messages FOR EACH ROW WHEN (NEW.queue = 'boom') EXECUTE FUNCTION ${schema}.boom()`,
  );
  return { store, sql, schema };
}

const rows = async (sql: SQL, schema: string, queue: string) =>
  Number((await sql.unsafe(`SELECT count(*)::int AS n FROM ${schema}.mcq_messages WHERE queue = $1`, [queue]))[0].n);

if (havePostgres("batch.postgres")) {
  afterAll(async () => {
    await Bun.sleep(50); // the stores' close() finishes in the background
    await dropSchemas(schemas);
  });

  describe("a batch that fails in Postgres", () => {
    test("its take's rejection reaches batch.fail first: the store undoes that batch (counters, no queue left behind), and a committed batch stays", async () => {
      const { store, sql, schema } = await storeWithBoom();
      const errors: string[] = [];
      const batch = createBatch(store, (e) => errors.push(e.message));
      store.enqueue("other", 0, body, 0, Date.now());
      await batch.commit();
      // E: a set, a set that fails in Postgres, and a take, as a deferred get makes one (get-deferred.ts).
      store.enqueue("good", 0, body, 0, Date.now());
      store.enqueue("boom", 0, body, 0, Date.now());
      const e = batch.epoch();
      const taken = Promise.resolve(store.dequeue("other", Date.now())).then(
        () => "answered",
        (err) => {
          batch.fail(err, e);
          return "rejected";
        },
      );
      await batch.commit();
      expect(await taken).toBe("rejected");
      expect(await rows(sql, schema, "good")).toBe(0);
      expect(store.size!("good")).toBeNull(); // E's set is not counted: E is undone in the store's view
      expect(store.totals!()).toMatchObject({ queues: 1, items: 1 });
      // A batch that commits, then an unrelated failure of the open batch: the committed one stays.
      store.enqueue("kept", 0, body, 0, Date.now());
      await batch.commit();
      store.enqueue("dropped", 0, body, 0, Date.now());
      batch.fail(new Error("housekeeping"));
      expect(store.size!("kept")).toMatchObject({ items: 1, total: 1 });
      expect(store.size!("dropped")).toBeNull();
      expect(store.totals!()).toMatchObject({ queues: 2, items: 2 });
      expect(errors).toEqual(["Postgres: boom", "Error: housekeeping"]); // each failure once, named by the failing statement
      await store.close();
      await sql.close();
    });

    test("a later unrelated failure does not cut the VALUE of a healthy batch in flight, nor undo its take", async () => {
      const { store, sql, schema } = await storeWithBoom();
      const errors: string[] = [];
      const batch = createBatch(store, (e) => errors.push(e.message));
      store.enqueue("keep", 0, body, 0, Date.now());
      await batch.commit();
      // E fails in Postgres; its take's rejection reaches batch.fail first.
      store.enqueue("boom", 0, body, 0, Date.now());
      const e = batch.epoch();
      const failedTake = Promise.resolve(store.dequeue("none", Date.now())).catch((err) => batch.fail(err, e));
      await batch.commit();
      await failedTake;
      // G: a healthy take; while G is in flight, the open batch fails (a housekeeping task threw).
      const g = batch.epoch();
      const takeG = Promise.resolve(store.dequeue("keep", Date.now()));
      const landed = batch.commit();
      const m = await takeG;
      expect(m).not.toBeNull();
      expect(batch.within(g, () => {})).toBe(true); // G is not undone
      batch.fail(new Error("housekeeping"));
      await landed;
      expect(batch.within(g, () => {})).toBe(true);
      expect(batch.inFlight()).toBe(0);
      expect(await rows(sql, schema, "keep")).toBe(0); // G committed: its VALUE must reach its client
      expect(errors).toEqual(["Postgres: boom", "Error: housekeeping"]); // no "batch undone" of G
      expect(store.size!("keep")).toMatchObject({ items: 0, fetched: 1 });
      await store.close();
      await sql.close();
    });
  });
}
