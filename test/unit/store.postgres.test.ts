/** The Postgres store: the shared contract against a real Postgres, plus what only it shows. */
import { afterAll, describe, expect, test } from "bun:test";
import { openPostgresStore, type PostgresStore } from "../../src/store/postgres";
import { dropSchemas, freshSchema, havePostgres, pgStoreUrl, schemaV1 } from "../pg";
import { storeContract } from "./store.contract";

const schemas: string[] = [];
const stores: PostgresStore[] = [];
const options = { leaseS: 30, timeoutMs: 5000, log: () => {}, home: null };

async function open(schema = freshSchema("store")): Promise<PostgresStore> {
  if (!schemas.includes(schema)) schemas.push(schema);
  const s = await openPostgresStore(pgStoreUrl(schema), options);
  stores.push(s);
  return s;
}

/**
 * The store as the contract drives it: a take is answered once its batch is sent, so each take
 * commits the batch (the server's turn commits after its requests ran; a test awaits in between).
 */
function takesCommit(s: PostgresStore): PostgresStore {
  const w: PostgresStore = Object.create(s);
  let sent: Promise<unknown> = Promise.resolve();
  for (const verb of ["dequeue", "peek", "open"] as const) {
    w[verb] = (queue: string, now: number) => {
      const taken = s[verb](queue, now);
      sent = Promise.resolve(s.commit()).catch(() => {});
      return taken;
    };
  }
  // A redrive's count is answered the same way.
  const dl = s.deadLetters!;
  w.deadLetters = {
    ...dl,
    redrive: (from, to, now) => {
      const n = dl.redrive(from, to, now);
      sent = Promise.resolve(s.commit()).catch(() => {});
      return n;
    },
  };
  // The store calls its own onAvailable: the contract's notices must reach it, not this wrapper.
  Object.defineProperty(w, "onAvailable", { get: () => s.onAvailable, set: (f) => (s.onAvailable = f) });
  // commit() also waits for the batches the takes sent: after it, other nodes see them.
  w.commit = async () => {
    await sent;
    await s.commit();
  };
  return w;
}

if (havePostgres("store.postgres")) {
  afterAll(async () => {
    await Bun.sleep(50); // the stores' close() finishes in the background
    await dropSchemas(schemas);
  });

  storeContract("postgres", async () => takesCommit(await open()), {
    idsAtEnqueue: false,
    syncSweep: false,
    exactOldest: false,
    clock: "database",
    takesAtCommit: true,
    countedByVerbs: ["deduplicated", "discarded", "deadLettered"],
  });

  describe("postgres store", () => {
    test("two nodes on one schema: each message is taken once, and counters are summed over nodes", async () => {
      const schema = freshSchema("two");
      const a = await open(schema);
      const b = await open(schema);
      for (let i = 0; i < 20; i++) a.enqueue("q", 0, Buffer.from(`m${i}`), 0, 1);
      await a.commit();
      const takes = [];
      for (let i = 0; i < 12; i++) takes.push(a.dequeue("q", 1), b.dequeue("q", 1));
      const answers = Promise.all(takes); // answered once their batches are sent
      await Promise.all([a.commit(), b.commit()]);
      const got = await answers;
      const bodies = got.filter((m) => m !== null).map((m) => Buffer.from(m!.body).toString());
      expect(bodies.length).toBe(20);
      expect(new Set(bodies).size).toBe(20);
      await a.refresh();
      await b.refresh();
      for (const s of [a, b]) expect(s.detail("q", 1)).toMatchObject({ items: 0, total: 20, fetched: 20, open: 0 });
      a.close();
      b.close();
    });

    test("expiry follows Postgres's clock, not a node's: nodes whose clocks are hours apart agree", async () => {
      const schema = freshSchema("clock");
      const behind = takesCommit(await open(schema)); // its clock is an hour slow
      const ahead = takesCommit(await open(schema)); // its clock is an hour fast
      const slow = Date.now() - 3_600_000;
      const fast = Date.now() + 3_600_000;
      behind.enqueue("c", 0, Buffer.from("lives a minute"), slow + 60_000, slow);
      behind.enqueue("c", 0, Buffer.from("expired when set"), slow - 1, slow);
      behind.enqueue("c", 0, Buffer.from("never expires"), 0, slow);
      await behind.commit();
      // On node clocks the first would be an hour dead for `ahead`, and the second alive for `behind`.
      expect(Buffer.from((await ahead.dequeue("c", fast))!.body).toString()).toBe("lives a minute");
      await ahead.commit();
      expect(Buffer.from((await behind.peek("c", slow))!.body).toString()).toBe("never expires");
      expect(Buffer.from((await ahead.dequeue("c", fast))!.body).toString()).toBe("never expires");
      expect(await ahead.dequeue("c", fast)).toBeNull();
      await Promise.all([behind.commit(), ahead.commit()]);
      behind.close();
      ahead.close();
    });

    test("one batch in flight, whatever MCQ_PG_IN_FLIGHT says (review 10b R2: the setting is gone; with 2, a batch sent on a new connection was failed with the one before)", async () => {
      const schema = freshSchema("inflight");
      schemas.push(schema);
      const code = `const { openPostgresStore } = await import(${JSON.stringify(`${import.meta.dir}/../../src/store/postgres.ts`)});
        const s = await openPostgresStore(process.env.URL, { leaseS: 30, timeoutMs: 5000, log: () => {}, home: null });
        console.log(s.maxInFlight); await s.close();`;
      const run = Bun.spawn([process.execPath, "-e", code], {
        env: { ...process.env, MCQ_PG_IN_FLIGHT: "2", URL: `${process.env.MCQ_TEST_PG}${process.env.MCQ_TEST_PG!.includes("?") ? "&" : "?"}schema=${schema}` },
        stdout: "pipe", stderr: "pipe",
      });
      const [out, err, code2] = await Promise.all([new Response(run.stdout).text(), new Response(run.stderr).text(), run.exited]);
      expect([out, err, code2]).toEqual(["1\n", "", 0]); // before: 2
    });

    test("a schema made by version 1 (before the queue features) migrates, and its data stays", async () => {
      const schema = freshSchema("v1");
      schemas.push(schema);
      const { SQL } = await import("bun");
      const sql = new SQL(process.env.MCQ_TEST_PG!, { max: 1 });
      // Version 1 as it shipped: the tables, one waiting message and its counters.
      await schemaV1(sql, schema);
      await sql.unsafe(`INSERT INTO mcq_messages (queue, flags, created, expires, body) VALUES ('old', 7, 1, 0, 'kept');
        INSERT INTO mcq_counters (queue, node, total, items, bytes) VALUES ('old', 0, 1, 1, 4);`).simple();
      const s = await open(schema);
      expect(s.detail("old", 1)).toMatchObject({ items: 1, total: 1, delayed: 0, deduplicated: 0 });
      const opened = s.open("old", 1); // answered once its batch is sent
      await s.commit();
      const m = (await opened)!;
      expect([Buffer.from(m.body).toString(), m.flags, s.deadLetters!.deliveries("old", m.id)]).toEqual(["kept", 7, 1]);
      expect(s.confirm("old", m.id)).toBe(true);
      s.delays!.enqueue("old", 0, Buffer.from("later"), 0, 1, 60_001);
      await s.commit();
      expect(s.detail("old", 1)).toMatchObject({ items: 1, total: 2, fetched: 1, delayed: 1 });
      expect((await sql.unsafe(`SELECT version FROM ${schema}.mcq_version`))[0].version).toBe(6);
      await sql.close();
      await s.close();
    });

    test("a schema of version 2 (feature counters without dead_letter_skipped and fanout_refused) migrates; they are kept per node", async () => {
      const schema = freshSchema("v2");
      (await open(schema)).close();
      await Bun.sleep(20);
      const { SQL } = await import("bun");
      const sql = new SQL(process.env.MCQ_TEST_PG!, { max: 1 });
      // Version 2 as it shipped is version 3 without the two columns; a queue with its counters.
      await sql.unsafe(`SET search_path TO ${schema};
        ALTER TABLE mcq_counters DROP COLUMN dead_letter_skipped, DROP COLUMN fanout_refused;
        UPDATE mcq_version SET version = 2;
        INSERT INTO mcq_messages (queue, flags, created, expires, body) VALUES ('old', 0, 1, 0, 'kept');
        INSERT INTO mcq_counters (queue, node, total, items, bytes, deduplicated, dead_lettered, discarded) VALUES ('old', 0, 3, 1, 4, 2, 1, 1);`).simple();
      const a = await open(schema);
      const none = { deduplicated: 2, deadLettered: 1, discarded: 1, deadLetterSkipped: 0, fanoutRefused: 0 };
      expect(a.detail("old", 1)).toMatchObject({ items: 1, total: 3, features: none });
      expect((await sql.unsafe(`SELECT version FROM ${schema}.mcq_version`))[0].version).toBe(6);
      // Counted by two nodes, each in its own row; a node started later reads their sum.
      const b = await open(schema);
      a.countFeature!("old", "fanoutRefused");
      a.countFeature!("old", "deadLetterSkipped");
      a.countFeature!("old", "deadLettered"); // counted by the move's own statement, not here
      b.countFeature!("old", "fanoutRefused");
      b.countFeature!("nowhere", "fanoutRefused"); // no such queue: counted nowhere
      await Promise.all([a.commit(), b.commit()]);
      const rows = await sql.unsafe(`SELECT node, fanout_refused::int AS f, dead_letter_skipped::int AS s FROM ${schema}.mcq_counters
        WHERE queue = 'old' AND node IN (${a.node}, ${b.node}) ORDER BY node`);
      expect(rows.map((r: any) => [r.f, r.s])).toEqual([[1, 1], [1, 0]]);
      await Promise.all([a.close(), b.close()]);
      const fresh = await open(schema);
      expect(fresh.detail("old", 1)?.features).toEqual({ ...none, deadLetterSkipped: 1, fanoutRefused: 2 });
      expect(fresh.detail("nowhere", 1)).toBeNull();
      await sql.close();
      await fresh.close();
    });

    test("feature counters are exact in Postgres: each statement counts what only it knows (dedup across nodes, abort/delay, dead letters, redrive, flush)", async () => {
      const schema = freshSchema("exact");
      const T = 1_000_000;
      const enc = (b: string) => Buffer.from(b);
      const a = takesCommit(await open(schema));
      const b = takesCommit(await open(schema));
      const set = (s: PostgresStore, body: string, token: string) => {
        if (s.dedup!.seen("q", token, T)) return;
        s.enqueue("q", 0, enc(body), 0, T);
        s.dedup!.remember("q", token, T + 60_000);
      };
      set(a, "m1", "t1");
      await a.commit();
      set(b, "m1 again", "t1"); // Postgres turns it away: b's batch had counted it as stored
      await b.commit();
      for (const body of ["m2", "m3", "m4"]) a.enqueue("q", 0, enc(body), 0, T);
      a.delays!.enqueue("q", 0, enc("later"), 0, T, T + 60_000);
      await a.commit();
      const m1 = (await a.open("q", T))!;
      expect(a.delays!.release("q", m1.id, T + 60_000, T)).toBe(true); // abort/delay
      const m2 = (await a.open("q", T))!;
      expect(a.deadLetters!.moveOpen("q", m2.id, "q.dlq", T)).toBe(true);
      await a.commit();
      expect(await a.deadLetters!.redrive("q.dlq", "q", T)).toBe(1);
      await a.commit();
      a.delays!.enqueue("f", 0, enc("flushed"), 0, T, T + 60_000);
      await a.commit();
      a.flush("f");
      await a.commit();
      // A node started now knows only what Postgres counted; the first node, refreshed, agrees.
      const fresh = await open(schema);
      await a.refresh!();
      const want = {
        q: { total: 6, items: 5, fetched: 1, open: 0, delayed: 2, deduplicated: 1, deadLettered: 1 },
        "q.dlq": { total: 1, items: 0, fetched: 1, open: 0, delayed: 0 },
        f: { total: 1, items: 0, delayed: 0 },
      };
      for (const [q, counts] of Object.entries(want)) {
        expect(fresh.detail(q, T)).toMatchObject(counts);
        expect(a.detail(q, T)).toMatchObject(counts);
      }
      await Promise.all([a.close(), b.close(), fresh.close()]);
    });

    test("the reaper is one statement: made to fail half-way (freeing the messages), it leaves the dead node for the next reap, whose open message then comes back; a clean stop frees what its node still holds", async () => {
      const { SQL } = await import("bun");
      const { statements } = await import("../../src/store/postgres-sql");
      const schema = freshSchema("reap");
      const a = takesCommit(await open(schema));
      const b = takesCommit(await open(schema));
      a.enqueue("r", 0, Buffer.from("held by a"), 0, 1);
      a.enqueue("r", 0, Buffer.from("held by b"), 0, 1);
      await a.commit();
      const m = (await a.open("r", 1))!;
      await a.commit();
      const sql = new SQL(process.env.MCQ_TEST_PG!, { max: 1 });
      const owner = async (id: number) => (await sql.unsafe(`SELECT owner FROM ${schema}.mcq_messages WHERE id = $1`, [id]))[0].owner;
      expect(await owner(m.id)).toBe(a.node);
      // Node a is dead (as after kill -9): the reaper's freeing of its messages fails in Postgres.
      await sql.unsafe(`CREATE FUNCTION ${schema}.nofree() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'nofree'; END $$`);
      await sql.unsafe(`CREATE TRIGGER nofree BEFORE UPDATE ON ${schema}.mcq_messages FOR EACH ROW WHEN (NEW.owner IS NULL) EXECUTE FUNCTION ${schema}.nofree()`);
      const st = statements(schema);
      await expect(st.reap(sql, 30, a.node)).rejects.toThrow("nofree");
      await sql.unsafe(`DROP TRIGGER nofree ON ${schema}.mcq_messages`);
      expect(await st.reap(sql, 30, a.node)).toBe(1); // a's row was not deleted without its messages
      expect(await owner(m.id)).toBeNull();
      // b opens one and stops cleanly without giving it back: leaving frees it (no node would reap it).
      const n = (await b.open("r", 1))!;
      await b.commit();
      expect(await owner(n.id)).toBe(b.node);
      await b.close();
      expect(await owner(n.id)).toBeNull();
      const fresh = await open(schema);
      expect(fresh.detail("r", 1)).toMatchObject({ items: 2, open: 0 });
      await Promise.all([a.close(), fresh.close()]);
      await sql.close();
    });

    test("a schema newer than this mcq knows is refused", async () => {
      const schema = freshSchema("newer");
      const s = await open(schema);
      s.close();
      await Bun.sleep(20);
      const { SQL } = await import("bun");
      const sql = new SQL(process.env.MCQ_TEST_PG!, { max: 1 });
      await sql.unsafe(`UPDATE ${schema}.mcq_version SET version = 99`);
      await sql.close();
      expect(open(schema)).rejects.toThrow(`the Postgres schema ${schema} is version 99, newer than this mcq knows (6): upgrade mcq`);
    });
  });
}
