/**
 * What the COMMIT-outcome lookup (postgres-batches.ts resolveCommit, tracker issue 10) must not
 * cost or break: a batch that wrote nothing assigns no transaction id (a poller's empty gets
 * would burn one each, and flush a commit record); a batch whose COMMIT answered while mcq was
 * paused past the store's timeout is neither looked up nor failed.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { SQL } from "bun";
import { join } from "node:path";
import { asRole, dropSchemas, freshSchema, havePostgres, lateCloseRelay, PG_URL, pgStoreUrl } from "../pg";
import { set, startServer, stopAll, tempDir, value } from "./harness";

const schemas: string[] = [];
const roles: string[] = [];

/** The cluster's next transaction id, read without assigning one. */
const nextXid = async (sql: SQL) => BigInt((await sql.unsafe("SELECT pg_snapshot_xmax(pg_current_snapshot())::text AS x"))[0].x);

/** The pid of the backend waiting on `event` whose application_name is `app`, once there is one (each check awaited). */
async function waiting(sql: SQL, event: string, app: string): Promise<number> {
  for (const deadline = Date.now() + 10_000; Date.now() < deadline; ) {
    const found = await sql.unsafe(`SELECT pid FROM pg_stat_activity WHERE wait_event = $1 AND application_name = $2`, [event, app]);
    if (found.length > 0) return Number(found[0].pid);
  }
  throw new Error(`no backend waited on ${event}`);
}

if (havePostgres("e2e postgres commit lookup")) {
  const sql = new SQL(PG_URL!, { max: 1 });
  await sql.unsafe("SET synchronous_commit = local"); // the test's own commits do not wait for a standby

  /** A node on a fresh schema, and a client whose set of m1 into q it acknowledged. */
  const nodeWithOne = async () => {
    const schema = freshSchema("lookup");
    schemas.push(schema);
    const server = await startServer(["--store", pgStoreUrl(schema)], join(tempDir(), "data"));
    const c = await server.connect();
    expect(await c.call(set("q", "m1"))).toBe("STORED\r\n");
    return { schema, server, c };
  };

  /** Commits wait for a synchronous standby that never comes (all but those of synchronous_commit = local). */
  const standbyNeverAnswers = async (on: boolean) => {
    await sql.unsafe(on ? "ALTER SYSTEM SET synchronous_standby_names = 'mcq_no_such_standby'" : "ALTER SYSTEM RESET synchronous_standby_names");
    await sql.unsafe("SELECT pg_reload_conf()");
    // The reload is signalled to every backend at once, after pg_reload_conf() returns: once this
    // one has it, mcq's has it too, and applies it before its next batch's COMMIT.
    const want = on ? "mcq_no_such_standby" : "";
    while ((await sql.unsafe("SHOW synchronous_standby_names"))[0].synchronous_standby_names !== want);
  };

  /** Lets a stopped backend run again, if it still exists. */
  const resume = (pid: number) => {
    try {
      if (pid !== 0) process.kill(pid, "SIGCONT");
    } catch {} // gone already
  };

  /** A fresh schema owned by a role of its own (LOGIN, no superuser), both dropped at the end. */
  const ownRole = async () => {
    const schema = freshSchema("lookup");
    const role = `${schema}_r`;
    schemas.push(schema);
    roles.push(role);
    await sql.unsafe(`CREATE ROLE ${role} LOGIN`);
    await sql.unsafe(`GRANT CREATE ON DATABASE ${new URL(PG_URL!).pathname.slice(1) || "postgres"} TO ${role}`);
    await sql.unsafe(`CREATE SCHEMA ${schema} AUTHORIZATION ${role}`);
    return { schema, role };
  };

  afterAll(async () => {
    await standbyNeverAnswers(false).catch(() => {});
    await stopAll();
    await dropSchemas(schemas);
    for (const r of roles) await sql.unsafe(`DROP OWNED BY ${r}; DROP ROLE ${r}`).catch(() => {});
    await sql.close();
  });

  describe("the COMMIT-outcome lookup", () => {
    test("empty-queue gets and peeks assign no transaction id: 150 such batches move the xid counter by a heartbeat or two, not 150", async () => {
      const { schema, server, c } = await nodeWithOne();
      expect(await c.call("get q\r\n")).toBe(value("q", "m1") + "END\r\n");
      expect(await c.call(set("p", "m2"))).toBe("STORED\r\n");
      const before = await nextXid(sql);
      for (let i = 0; i < 150; i++) expect(await c.call("get q\r\nget p/peek\r\n")).toBe("END\r\n" + value("p/peek", "m2") + "END\r\n");
      const used = Number((await nextXid(sql)) - before);
      // Before: 150 (one per batch: pg_current_xact_id() right after BEGIN). Now: a heartbeat now and then.
      expect(used).toBeLessThan(10);
      // A batch that writes still has its id, and commits.
      expect(await c.call("get p\r\nget p\r\n")).toBe(value("p", "m2") + "END\r\nEND\r\n");
      expect(await c.call("stats queue\r\n")).toBe("STAT p 1/1\r\nSTAT q 1/1\r\nEND\r\n");
      c.close();
    }, 30_000);

    test("mcq paused past the timeout while its COMMIT answers, lookups impossible: the get's VALUE stands, nothing failed or undone", async () => {
      // Its own role, so that a connection limit can make the lookup's connection fail (superusers have none).
      const { schema, role } = await ownRole();
      const server = await startServer(["--store", asRole(pgStoreUrl(schema), role)], join(tempDir(), "data"));
      const c = await server.connect();
      expect(await c.call(set("q", "m0") + set("q", "m1") + set("q", "m2"))).toBe("STORED\r\n".repeat(3));
      // Every statement of a get prepared: the paused one is sent whole, none waits for an answer to be sent.
      expect(await c.call("get q\r\n")).toBe(value("q", "m0") + "END\r\n");
      const conns = Number((await sql.unsafe(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE usename = $1`, [role]))[0].n);
      await sql.unsafe(`ALTER ROLE ${role} CONNECTION LIMIT ${conns}`); // its connections stay; a new one is refused
      // The get's batch waits on a lock in Postgres, so that mcq can be paused before any of its answers comes.
      const holder = new SQL(PG_URL!, { max: 1 });
      await holder.unsafe("BEGIN");
      await holder.unsafe(`LOCK TABLE ${schema}.mcq_messages IN ACCESS EXCLUSIVE MODE`);
      const sent = performance.now();
      const reply = c.call("get q\r\n", 20_000);
      while ((await sql.unsafe(`SELECT 1 FROM pg_stat_activity WHERE usename = $1 AND wait_event_type = 'Lock'`, [role])).length === 0);
      server.proc.kill("SIGSTOP");
      try {
        await holder.unsafe("COMMIT");
        // Its batch commits while mcq is paused: every answer waits in mcq's socket.
        while (Number((await sql.unsafe(`SELECT count(*)::int AS n FROM ${schema}.mcq_messages`))[0].n) !== 1);
        // The pause itself (a GC pause, a stalled VM): past the store's 5 s timeout.
        await Bun.sleep(Math.max(0, sent + 6000 - performance.now()));
      } finally {
        server.proc.kill("SIGCONT");
        await holder.close();
      }
      expect(await reply).toBe(value("q", "m1") + "END\r\n");
      await sql.unsafe(`ALTER ROLE ${role} CONNECTION LIMIT -1`);
      // No lookup was started (none could have answered): the COMMIT had answered.
      expect(server.stderr()).not.toContain("outcome is unknown");
      expect(server.stderr()).not.toContain("had committed");
      expect(await c.call("get q\r\nget q\r\n")).toBe(value("q", "m2") + "END\r\nEND\r\n");
      expect(await c.call("stats queue\r\n")).toBe("STAT q 3/3\r\nEND\r\n");
      c.close();
      await server.kill("SIGTERM");
    }, 30_000);

    test("a set and a get whose COMMIT waits for a synchronous standby past the timeout: the wait is never cut short, both answer SERVER_ERROR, SIGTERM is bounded, and the get's message is given back at the next start", async () => {
      const schema = freshSchema("lookup");
      schemas.push(schema);
      const home = join(tempDir(), "data");
      let server = await startServer(["--store", pgStoreUrl(schema)], home);
      const c = await server.connect();
      expect(await c.call(set("q", "m1"))).toBe("STORED\r\n");
      await standbyNeverAnswers(true);
      let got: string;
      let code: number;
      let took: number;
      try {
        // One batch: its COMMIT is written locally and waits for a standby that never answers.
        const reply = c.call(set("p", "m2") + "get q\r\n", 20_000);
        while ((await sql.unsafe(`SELECT 1 FROM pg_stat_activity WHERE wait_event = 'SyncRep'`)).length === 0);
        got = await reply;
        expect(got).toMatch(/^SERVER_ERROR Postgres: no answer within 5000 ms; transaction \d+ is still in progress/);
        // Before: the lookup ended that backend, which committed it on the primary alone (Postgres:
        // "committed locally, but might not have been replicated"), and answered STORED and VALUE:
        // a failover to the standby then lost m2 and delivered m1 again.
        const xid = /transaction (\d+)/.exec(got)![1]!;
        expect((await sql.unsafe(`SELECT 1 FROM pg_stat_activity WHERE backend_xid = $1::text::xid AND wait_event = 'SyncRep'`, [xid])).length).toBe(1);
        const at = performance.now();
        const exited = server.kill("SIGTERM");
        await c.closedBy(30_000);
        code = await exited;
        took = performance.now() - at;
      } finally {
        await standbyNeverAnswers(false);
      }
      const unknown = /^SERVER_ERROR Postgres: no answer within 5000 ms; transaction \d+ is still in progress \(it could not be ended, or it waits for a synchronous standby\): its outcome is unknown\r\n/;
      expect(got).toMatch(new RegExp(unknown.source + unknown.source.slice(1) + "$"));
      // Not a clean stop: leaving (a commit) waits for the standby too, past the timeout.
      expect(code).toBe(1);
      expect(took).toBeLessThan(2 * (2 * 5000 + 3000)); // the stop's wait for the batch, then the store's close
      // The standby's wait ended (the setting reset), so the batch committed: the set stands, and the
      // get's message, taken with no VALUE sent, is given back by the next start on this directory.
      while ((await sql.unsafe(`SELECT 1 FROM pg_stat_activity WHERE wait_event = 'SyncRep'`)).length > 0);
      server = await startServer(["--store", pgStoreUrl(schema)], home);
      const c2 = await server.connect();
      expect(await c2.call("get q/t=10000\r\nget p\r\n")).toBe(value("q/t=10000", "m1") + "END\r\n" + value("p", "m2") + "END\r\n");
      expect(server.stderr()).toContain("had committed: gave back 1 messages taken and 0 opened");
      c2.close();
      await server.kill("SIGTERM");
    }, 60_000);

    test("a get whose batch waits past the timeout before its transaction id answers: its backend is ended before the SERVER_ERROR, so the message stays queued", async () => {
      // Through a relay that brings a closed connection's end to Postgres 3 s late, as a network may.
      const relay = lateCloseRelay(3000);
      const schema = freshSchema("lookup");
      schemas.push(schema);
      const server = await startServer(["--store", relay.url(schema)], join(tempDir(), "data"));
      const c = await server.connect();
      expect(await c.call(set("q", "m0") + set("q", "m1") + set("q", "m2"))).toBe("STORED\r\n".repeat(3));
      // Every statement of a get prepared on the connection: the next one leaves in one write, COMMIT too.
      expect(await c.call("get q\r\n")).toBe(value("q", "m0") + "END\r\n");
      // The batch's DELETE waits on a lock: BEGIN and its backend's pid answer, its transaction id does not.
      const holder = new SQL(PG_URL!, { max: 1 });
      let reply: string;
      let backend = 0;
      try {
        await holder.unsafe("BEGIN");
        await holder.unsafe(`LOCK TABLE ${schema}.mcq_messages IN ACCESS EXCLUSIVE MODE`);
        const pending = c.call("get q\r\n", 20_000);
        while (backend === 0) {
          const found = await sql.unsafe(`SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND pid <> pg_backend_pid()`);
          if (found.length > 0) backend = Number(found[0].pid);
        }
        reply = await pending;
      } finally {
        await holder.unsafe("COMMIT").catch(() => {});
        await holder.close();
      }
      // Before: the connection was closed with the backend still waiting; once the lock went, it read
      // the rest of the batch from its socket, COMMIT included, and m1 was gone with no VALUE sent.
      expect(reply).toMatch(/^SERVER_ERROR Postgres: no answer within 5000 ms; its backend was ended before its COMMIT ran: nothing of it was done\r\n$/);
      while ((await sql.unsafe(`SELECT 1 FROM pg_stat_activity WHERE pid = $1`, [backend])).length > 0);
      const left = await sql.unsafe(`SELECT convert_from(body, 'UTF8') AS b FROM ${schema}.mcq_messages ORDER BY id`);
      expect(left.map((r: { b: string }) => r.b)).toEqual(["m1", "m2"]);
      expect(await c.call("get q\r\nget q\r\n")).toBe(value("q", "m1") + "END\r\n" + value("q", "m2") + "END\r\n");
      expect(await c.call("stats queue\r\n")).toBe("STAT q 3/3\r\n" + "END\r\n");
      c.close();
      await server.kill("SIGTERM");
      relay.stop();
    }, 30_000);

    test("the same with a role that may not read the server's identity (a managed server): its backend is found by its connection's name, ended, and the message stays (review 10a H1)", async () => {
      const relay = lateCloseRelay(8000);
      const { schema, role } = await ownRole();
      const url = asRole(relay.url(schema), role);
      await sql.unsafe("REVOKE EXECUTE ON FUNCTION pg_control_system() FROM PUBLIC");
      let reply: string;
      const holder = new SQL(PG_URL!, { max: 1 });
      try {
        const server = await startServer(["--store", url], join(tempDir(), "data"));
        const c = await server.connect();
        expect(await c.call(set("q", "m0") + set("q", "m1"))).toBe("STORED\r\n".repeat(2));
        expect(await c.call("get q\r\n")).toBe(value("q", "m0") + "END\r\n"); // the get's statements prepared
        await holder.unsafe("BEGIN");
        await holder.unsafe(`LOCK TABLE ${schema}.mcq_messages IN ACCESS EXCLUSIVE MODE`);
        const pending = c.call("get q\r\n", 20_000);
        while ((await sql.unsafe(`SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND usename = $1`, [role])).length === 0);
        reply = await pending;
        await holder.unsafe("COMMIT");
        // Before: "could not be ended (the server it ran on is not known)"; the connection's end came
        // 8 s late, the backend ran its batch to COMMIT once the lock went, and m1 was gone.
        expect(reply).toMatch(/^SERVER_ERROR Postgres: no answer within 5000 ms; its backend was ended before its COMMIT ran: nothing of it was done\r\n$/);
        while ((await sql.unsafe(`SELECT 1 FROM pg_stat_activity WHERE usename = $1 AND wait_event_type = 'Lock'`, [role])).length > 0);
        expect(await c.call("get q\r\nget q\r\n")).toBe(value("q", "m1") + "END\r\n" + "END\r\n");
        c.close();
        await server.kill("SIGTERM");
      } finally {
        await holder.unsafe("COMMIT").catch(() => {});
        await holder.close();
        await sql.unsafe("GRANT EXECUTE ON FUNCTION pg_control_system() TO PUBLIC");
        relay.stop();
      }
    }, 40_000);

    test("with a synchronous standby, a COMMIT stalled before its wait for the standby is not ended: SERVER_ERROR, never STORED for what the standby never had (review 10b R1)", async () => {
      const { schema, server, c } = await nodeWithOne();
      const settings = async (on: boolean) => {
        for (const name of ["commit_delay", "commit_siblings"]) {
          await sql.unsafe(on ? `ALTER SYSTEM SET ${name} = ${name === "commit_delay" ? 100000 : 0}` : `ALTER SYSTEM RESET ${name}`);
        }
        await standbyNeverAnswers(on); // reloads the configuration
      };
      await settings(true);
      let backend = 0;
      let reply: string;
      try {
        const pending = c.call(set("q", "m2"), 20_000);
        // Its COMMIT, caught in commit_delay's sleep, before the wait for the standby: stopped 6 s
        // there, as a stalled disk would hold it, so that the lookup finds it in its COMMIT.
        while (backend === 0) {
          const found = await sql.unsafe(
            `SELECT a.pid FROM pg_stat_activity a WHERE a.state = 'active' AND a.query = 'COMMIT' AND a.wait_event IS DISTINCT FROM 'SyncRep'
               AND EXISTS (SELECT 1 FROM pg_locks l JOIN pg_class k ON k.oid = l.relation JOIN pg_namespace n ON n.oid = k.relnamespace
                 WHERE l.pid = a.pid AND n.nspname = $1)`,
            [schema],
          );
          if (found.length > 0) backend = Number(found[0].pid);
        }
        process.kill(backend, "SIGSTOP");
        await Bun.sleep(6000); // the stall itself: what the test is about is that mcq's timeout passes meanwhile
        resume(backend); // (before the fix it was ended already: it ends once it runs)
        reply = await pending;
      } finally {
        resume(backend);
        await settings(false);
      }
      // Before: the lookup ended it; the end, pending when the wait began, cancelled the wait
      // ("committed locally, but might not have been replicated"): STORED, lost on failover.
      expect(reply).toMatch(/^SERVER_ERROR Postgres: no answer within 5000 ms; transaction \d+ is still in progress \(it could not be ended, or it waits for a synchronous standby\): its outcome is unknown\r\n$/);
      c.close();
      await server.kill("SIGTERM");
    }, 40_000);

    test("a backend that cannot be ended (stopped): the lookup answers 'could not be ended' within the timeout, not 'could not be asked'", async () => {
      const { schema, server, c } = await nodeWithOne();
      expect(await c.call(set("q", "m2") + set("q", "m3"))).toBe("STORED\r\nSTORED\r\n");
      await standbyNeverAnswers(true);
      let backend = 0;
      let reply = "";
      try {
        // A get whose COMMIT ran before the reload reached its backend (the reload is signalled to
        // every backend, this one's last on a loaded machine) commits with no wait: the next get waits.
        for (let tries = 0; backend === 0 && tries < 3; tries++) {
          let answered = false;
          const pending = c.call("get q\r\n", 20_000).finally(() => (answered = true));
          // This node's backend (it holds locks in its schema), not another node's heartbeat.
          while (backend === 0 && !answered) {
            const found = await sql.unsafe(
              `SELECT a.pid FROM pg_stat_activity a WHERE a.wait_event = 'SyncRep' AND EXISTS (SELECT 1 FROM pg_locks l
                 JOIN pg_class k ON k.oid = l.relation JOIN pg_namespace n ON n.oid = k.relnamespace WHERE l.pid = a.pid AND n.nspname = $1)`,
              [schema],
            );
            if (found.length > 0) backend = Number(found[0].pid);
          }
          // A backend that does not go when told to (stopped here; stuck in I/O elsewhere): the
          // lookup's terminate waits half the timeout for it, then pg_xact_status says "in progress".
          if (backend !== 0) process.kill(backend, "SIGSTOP");
          reply = await pending;
          if (backend === 0) expect(reply).toMatch(/^VALUE q 0 2\r\nm\d\r\nEND\r\n$/);
        }
      } finally {
        resume(backend);
        await standbyNeverAnswers(false);
      }
      // Before: the terminate waited the whole timeout, and the lookup's own timeout fired first.
      expect(reply).toMatch(/^SERVER_ERROR Postgres: no answer within 5000 ms; transaction \d+ is still in progress \(it could not be ended, or it waits for a synchronous standby\): its outcome is unknown\r\n$/);
      c.close();
    }, 30_000);
  });
}
