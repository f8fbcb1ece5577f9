/**
 * A batch whose COMMIT got no answer while Postgres could not be asked (tracker issue 10;
 * postgres-unknown.ts): the get answers SERVER_ERROR at once, and the batch is asked about again
 * once Postgres answers. If it had committed, the message its get took is given back, under its
 * own id (FIFO kept), and the counters are exact; if it had not, nothing is given back (no
 * duplicate). Never SERVER_ERROR with the message gone.
 *
 * Made deterministic: the server connects as a role of its own; a deferred trigger sleeps at
 * COMMIT past the store's timeout (5 s), and the role may open no new connection meanwhile
 * (CONNECTION LIMIT 0, which binds every role but superusers), so the connection that would ask
 * pg_xact_status is refused: the outcome stays unknown. The COMMIT then lands (or raises), and
 * once the limit is lifted the server asks again.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { SQL } from "bun";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { asRole, dropSchemas, freshSchema, havePostgres, PG_URL, pgStoreUrl } from "../pg";
import { parseStoreUrl } from "../../src/store/postgres-hosts";
import { set, startServer, stopAll, tempDir, value, type Client, type Running } from "./harness";

const schemas: string[] = [];
const ROLE = `mcq_unknown_${process.pid}`;

/** The store URL for `schema`, as ROLE. */
const storeUrl = (schema: string) => asRole(pgStoreUrl(schema), ROLE);

async function node(home = join(tempDir(), "data")): Promise<{ server: Running; schema: string; sql: SQL; c: Client }> {
  const schema = freshSchema("unknown");
  schemas.push(schema);
  const server = await startServer(["--store", storeUrl(schema)], home);
  const sql = new SQL(PG_URL!, { max: 1 });
  return { server, schema, sql, c: await server.connect() };
}

const rows = async (sql: SQL, schema: string) => Number((await sql.unsafe(`SELECT count(*)::int AS n FROM ${schema}.mcq_messages`))[0].n);

/** A deferred trigger on the deletion (a get) or update (an open) of a message: it runs at COMMIT, named (application_name), doing `body`. */
async function atCommit(sql: SQL, schema: string, body: string, on = "DELETE"): Promise<void> {
  await sql.unsafe(
    `CREATE FUNCTION ${schema}.at_commit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
       PERFORM set_config('application_name', '${schema}', false); ${body}; RETURN NULL; END $$`,
  );
  await sql.unsafe(
    `CREATE CONSTRAINT TRIGGER at_commit AFTER ${on} ON ${schema}.mcq_messages DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ${schema}.at_commit()`,
  );
}

/** The role may (not) open new connections; those it has stay. */
const connections = (sql: SQL, allowed: boolean) => sql.unsafe(`ALTER ROLE ${ROLE} CONNECTION LIMIT ${allowed ? -1 : 0}`);

/** Until the backend named `schema` (the trigger names it) is gone: its COMMIT is over, landed or not. Each check awaited. */
async function commitOver(sql: SQL, schema: string): Promise<void> {
  for (const deadline = Date.now() + 15_000; Date.now() < deadline; ) {
    const n = (await sql.unsafe(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1`, [schema]))[0].n;
    if (n === 0) return;
    await Bun.sleep(50);
  }
  throw new Error("the COMMIT did not end");
}

/** Until the server logged `text` (it asks again about once a second). */
async function logged(server: Running, text: string): Promise<void> {
  for (const deadline = Date.now() + 15_000; Date.now() < deadline; await Bun.sleep(50)) if (server.stderr().includes(text)) return;
  throw new Error(`no "${text}" in: ${server.stderr()}`);
}

/** The SERVER_ERROR of a get whose batch's outcome stayed unknown. */
const UNKNOWN = /^SERVER_ERROR Postgres: no answer within 5000 ms; whether transaction \d+ committed could not be asked \(.*\): its outcome is unknown\r\n$/;

if (havePostgres("e2e postgres unknown outcome")) {
  beforeAll(async () => {
    const sql = new SQL(PG_URL!, { max: 1 });
    await sql.unsafe(`CREATE ROLE ${ROLE} LOGIN`);
    await sql.unsafe(`GRANT CREATE ON DATABASE ${new URL(PG_URL!).pathname.slice(1) || "postgres"} TO ${ROLE}`);
    await sql.close();
  });

  afterAll(async () => {
    await stopAll();
    await dropSchemas(schemas);
    const sql = new SQL(PG_URL!, { max: 1 });
    await sql.unsafe(`DROP OWNED BY ${ROLE}`).catch(() => {});
    await sql.unsafe(`DROP ROLE IF EXISTS ${ROLE}`).catch(() => {});
    await sql.close();
  });

  describe("a COMMIT whose outcome stays unknown", () => {
    test("it had committed: once Postgres answers, the message its get took is back at its place, and stats are exact", async () => {
      const { server, schema, sql, c } = await node();
      expect(await c.call(set("q", "m1") + set("q", "m2"))).toBe("STORED\r\nSTORED\r\n");
      await atCommit(sql, schema, "PERFORM pg_sleep(7)");
      await connections(sql, false);
      try {
        expect(await c.call("get q\r\n", 15_000)).toMatch(UNKNOWN);
        await commitOver(sql, schema);
        expect(await rows(sql, schema)).toBe(1); // it landed: m1 is gone
      } finally {
        await connections(sql, true);
      }
      await sql.unsafe(`DROP TRIGGER at_commit ON ${schema}.mcq_messages`);
      await logged(server, "had committed: gave back 1 messages taken and 0 opened");
      expect(await c.call("get q\r\nget q\r\nget q\r\n")).toBe(value("q", "m1") + "END\r\n" + value("q", "m2") + "END\r\nEND\r\n");
      expect(await c.call("stats queue\r\n")).toBe("STAT q 2/2\r\nEND\r\n");
      c.close();
      await sql.close();
    }, 40_000);

    test("it had been rolled back: nothing is given back, the message is there once", async () => {
      const { server, schema, sql, c } = await node();
      expect(await c.call(set("q", "m1") + set("q", "m2"))).toBe("STORED\r\nSTORED\r\n");
      await atCommit(sql, schema, "PERFORM pg_sleep(7); RAISE EXCEPTION 'mcq test: this COMMIT fails'");
      await connections(sql, false);
      try {
        expect(await c.call("get q\r\n", 15_000)).toMatch(UNKNOWN);
        await commitOver(sql, schema);
        expect(await rows(sql, schema)).toBe(2);
      } finally {
        await connections(sql, true);
      }
      await sql.unsafe(`DROP TRIGGER at_commit ON ${schema}.mcq_messages`);
      await logged(server, "had been rolled back: its messages never left their queues");
      expect(await c.call("get q\r\nget q\r\nget q\r\n")).toBe(value("q", "m1") + "END\r\n" + value("q", "m2") + "END\r\nEND\r\n");
      expect(await c.call("stats queue\r\n")).toBe("STAT q 2/2\r\nEND\r\n");
      c.close();
      await sql.close();
    }, 40_000);

    test("an /open that had committed: its lease ends once Postgres answers, and the message is in its queue again", async () => {
      const { server, schema, sql, c } = await node();
      expect(await c.call(set("q", "m1") + set("q", "m2"))).toBe("STORED\r\nSTORED\r\n");
      await atCommit(sql, schema, "PERFORM pg_sleep(7)", "UPDATE");
      await connections(sql, false);
      try {
        expect(await c.call("get q/open\r\n", 15_000)).toMatch(UNKNOWN);
        await commitOver(sql, schema);
        expect(Number((await sql.unsafe(`SELECT count(owner)::int AS n FROM ${schema}.mcq_messages`))[0].n)).toBe(1); // it landed: m1 is leased
      } finally {
        await connections(sql, true);
      }
      await sql.unsafe(`DROP TRIGGER at_commit ON ${schema}.mcq_messages`);
      await logged(server, "had committed: gave back 0 messages taken and 1 opened");
      expect(await c.call("get q\r\nget q\r\nget q\r\n")).toBe(value("q", "m1") + "END\r\n" + value("q", "m2") + "END\r\nEND\r\n");
      expect(await c.call("stats queue q\r\n")).toContain("STAT open 0\r\n");
      expect(await c.call("stats queue\r\n")).toBe("STAT q 2/2\r\nEND\r\n");
      c.close();
      await sql.close();
    }, 40_000);

    /**
     * A get's batch of unknown outcome (landed, or rolled back by `body` raising), then the node is
     * killed before it could ask again; `edit`, if given, rewrites the entry kept in its data
     * directory (its server identity, as after a failover to a promoted standby: a new timeline; or
     * its store key). Started again on that directory (through `url`, if given: the same database
     * under another spelling), once Postgres lets it in: the log line `says`, then the queue and
     * its counters.
     */
    async function killedThenStarted(
      body: string, landed: boolean, says: string, edit?: (kept: { server: string; store: unknown }) => void, url = storeUrl,
    ): Promise<{ again: Running; home: string; kept: string }> {
      const home = join(tempDir(), "data");
      const first = await node(home);
      const { schema, sql, c } = first;
      expect(await c.call(set("q", "m1") + set("q", "m2"))).toBe("STORED\r\nSTORED\r\n");
      await atCommit(sql, schema, body);
      await connections(sql, false);
      try {
        expect(await c.call("get q\r\n", 15_000)).toMatch(UNKNOWN);
        c.close();
        await first.server.kill("SIGKILL");
        await commitOver(sql, schema);
        expect(await rows(sql, schema)).toBe(landed ? 1 : 2);
      } finally {
        await connections(sql, true);
      }
      await sql.unsafe(`DROP TRIGGER at_commit ON ${schema}.mcq_messages`);
      if (edit !== undefined) {
        const file = join(home, "postgres-unresolved.json");
        const kept = JSON.parse(readFileSync(file, "utf8")) as { server: string; store: unknown }[];
        expect(kept.length).toBe(1);
        edit(kept[0]!);
        writeFileSync(file, JSON.stringify(kept));
      }
      const kept = readFileSync(join(home, "postgres-unresolved.json"), "utf8");
      const again = await startServer(["--store", url(schema)], home);
      await logged(again, says);
      const c2 = await again.connect();
      expect(await c2.call("get q\r\nget q\r\nget q\r\n")).toBe(value("q", "m1") + "END\r\n" + value("q", "m2") + "END\r\nEND\r\n");
      expect(await c2.call("stats queue\r\n")).toBe("STAT q 2/2\r\nEND\r\n");
      expect(existsSync(join(home, "postgres-unresolved.json"))).toBe(false); // settled: nothing left to ask
      c2.close();
      await sql.close();
      return { again, home, kept };
    }

    /** The same database under another spelling of the URL: localhost for 127.0.0.1, and an option added. */
    const respelled = (schema: string) => {
      const u = new URL(storeUrl(schema));
      u.hostname = u.hostname === "localhost" ? "127.0.0.1" : "localhost";
      u.searchParams.set("application_name", "mcq_respelled");
      return u.toString();
    };

    test("started again through another spelling of the same database's URL: still its store, asked about exactly and given back (review 6 F5)", async () => {
      await killedThenStarted("PERFORM pg_sleep(7)", true, "had committed: gave back 1 messages taken and 0 opened", undefined, respelled);
    }, 40_000);

    test("a file written with the URL as key, started again through another spelling: its server's system is this one, so it is this store's (review 6 F5)", async () => {
      const legacy = (kept: { store: unknown }) => {
        const url = parseStoreUrl(storeUrl((kept.store as { schema: string }).schema));
        kept.store = `${url.safe} schema ${url.schema}`; // as mcq wrote it before
      };
      await killedThenStarted("PERFORM pg_sleep(7)", true, "had committed: gave back 1 messages taken and 0 opened", legacy, respelled);
    }, 40_000);

    test("the node is killed before it could ask again: started again on its data directory, it asks and gives back", async () => {
      const { again, home, kept } = await killedThenStarted("PERFORM pg_sleep(7)", true, "had committed: gave back 1 messages taken and 0 opened");
      // Killed again as if right after the give-back committed, before it forgot the batch: mcq_settled has it.
      await again.kill("SIGKILL");
      writeFileSync(join(home, "postgres-unresolved.json"), kept);
      const third = await startServer(again.args.slice(again.args.indexOf("--store")), home);
      await logged(third, "had committed: given back already");
      const c = await third.connect();
      expect(await c.call("get q\r\n")).toBe("END\r\n");
      expect(await c.call("stats queue\r\n")).toBe("STAT q 2/2\r\nEND\r\n");
      c.close();
    }, 50_000);

    // After a failover the xid may name another transaction: not asked about; the rows decide.
    // (identity: system id / timeline / start, postgres-sql.ts IDENTITY)
    const timeline2 = (kept: { server: string }) => {
      const [system, , start] = kept.server.split("/");
      kept.server = `${system}/00000002/${start}`;
    };

    test("its server's timeline changed meanwhile (a failover): the xid is not trusted, the taken row absent from the table is given back", async () => {
      await killedThenStarted("PERFORM pg_sleep(7)", true, "cannot be asked about on this server (another server or timeline): gave back 1 messages taken and 0 opened", timeline2);
    }, 40_000);

    test("its server's timeline changed and it had been rolled back: the row is still there, nothing is given back (no duplicate)", async () => {
      await killedThenStarted(
        "PERFORM pg_sleep(7); RAISE EXCEPTION 'mcq test: this COMMIT fails'", false,
        "cannot be asked about on this server (another server or timeline): gave back 0 messages taken and 0 opened", timeline2,
      );
    }, 40_000);

    test("SIGTERM while a batch of unknown outcome waits and Postgres refuses connections: the stop says it is kept in the file, and the next start gives it back", async () => {
      const home = join(tempDir(), "data");
      const { server, schema, sql, c } = await node(home);
      expect(await c.call(set("q", "m1") + set("q", "m2"))).toBe("STORED\r\nSTORED\r\n");
      await atCommit(sql, schema, "PERFORM pg_sleep(7)");
      await connections(sql, false);
      let xid = "";
      try {
        const reply = await c.call("get q\r\n", 15_000);
        expect(reply).toMatch(UNKNOWN);
        xid = /transaction (\d+)/.exec(reply)![1]!;
        await commitOver(sql, schema);
        c.close();
        // The last ask is refused too; the node cannot leave either (exit 1, as before).
        expect(await server.kill("SIGTERM")).toBe(1);
      } finally {
        await connections(sql, true);
      }
      const file = join(home, "postgres-unresolved.json");
      expect(server.stderr()).toContain(`Postgres: stopping with 1 batches of unknown outcome (transactions ${xid}): kept in ${file}; the next start on this data directory asks about them`);
      await sql.unsafe(`DROP TRIGGER at_commit ON ${schema}.mcq_messages`);
      const again = await startServer(["--store", storeUrl(schema)], home);
      await logged(again, `transaction ${xid} had committed: gave back 1 messages taken and 0 opened`);
      const c2 = await again.connect();
      expect(await c2.call("get q\r\nget q\r\nget q\r\n")).toBe(value("q", "m1") + "END\r\n" + value("q", "m2") + "END\r\nEND\r\n");
      c2.close();
      await sql.close();
    }, 40_000);

    test("a role that may not read the server's identity (pg_control_system() revoked from PUBLIC, as on a managed server): said once at open; a landed batch is given back as its rows decide", async () => {
      const admin = new SQL(PG_URL!, { max: 1 });
      await admin.unsafe("REVOKE EXECUTE ON FUNCTION pg_control_system() FROM PUBLIC");
      try {
        const { server, schema, sql, c } = await node();
        const said = "the server's identity cannot be read (permission denied for function pg_control_system): a COMMIT with no answer cannot be looked up";
        await logged(server, said);
        expect(await c.call(set("q", "m1") + set("q", "m2"))).toBe("STORED\r\nSTORED\r\n");
        await atCommit(sql, schema, "PERFORM pg_sleep(7)");
        await connections(sql, false);
        try {
          expect(await c.call("get q\r\n", 15_000)).toMatch(/^SERVER_ERROR Postgres: no answer within 5000 ms; the server of transaction \d+ is not known, so its id cannot be asked about: its outcome is unknown\r\n$/);
          await commitOver(sql, schema);
          expect(await rows(sql, schema)).toBe(1);
        } finally {
          await connections(sql, true);
        }
        await sql.unsafe(`DROP TRIGGER at_commit ON ${schema}.mcq_messages`);
        await logged(server, "cannot be asked about on this server (unknown server): gave back 1 messages taken and 0 opened");
        expect(await c.call("get q\r\nget q\r\nget q\r\n")).toBe(value("q", "m1") + "END\r\n" + value("q", "m2") + "END\r\nEND\r\n");
        expect(await c.call("stats queue\r\n")).toBe("STAT q 2/2\r\nEND\r\n");
        expect(server.stderr().split(said).length - 1).toBe(1); // once, not at every connection
        c.close();
        await sql.close();
      } finally {
        await admin.unsafe("GRANT EXECUTE ON FUNCTION pg_control_system() TO PUBLIC");
        await admin.close();
      }
    }, 40_000);
  });
}
