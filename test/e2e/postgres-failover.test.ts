/**
 * Failover, for real: the test makes a primary and a streaming standby of its own (initdb,
 * pg_basebackup, synchronous_standby_names with synchronous_commit = remote_apply), runs mcq with
 * both hosts in --store, kills the primary with kill -9 under load and promotes the standby with
 * `pg_ctl promote`. mcq must serve again within 10 s of the promotion, and no message it
 * acknowledged may be lost. The downtime the clients saw is printed.
 */
import { afterAll, expect, test } from "bun:test";
import { chownSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { havePostgres } from "../pg";
import { Client, startServer, stopAll, tempDir } from "./harness";

const root = process.getuid?.() === 0;

async function bin(name: string): Promise<string> {
  const found = (await Array.fromAsync(new Bun.Glob(`/usr/lib/postgresql/*/bin/${name}`).scan()))[0];
  if (found === undefined) throw new Error(`${name} not found under /usr/lib/postgresql`);
  return found;
}

/** Runs a Postgres program as the postgres user (Postgres refuses root); throws with its output on failure. */
async function asPostgres(name: string, ...args: string[]): Promise<string> {
  const cmd = [await bin(name), ...args];
  const proc = Bun.spawn(root ? ["runuser", "-u", "postgres", "--", ...cmd] : cmd, { stdout: "pipe", stderr: "pipe" });
  const [out, err, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  if (code !== 0) throw new Error(`${name} ${args.join(" ")}: exit ${code}: ${err}${out}`);
  return out;
}

const freePort = () => {
  const l = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const port = l.port;
  l.stop(true);
  return port;
};

async function startPg(dir: string, data: string, port: number): Promise<void> {
  await asPostgres("pg_ctl", "-D", data, "-l", join(dir, `${port}.log`), "-w", "-t", "30",
    "-o", `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c max_connections=50 -c shared_buffers=32MB`, "start");
}

async function psql(port: number, sql: string): Promise<string> {
  return (await asPostgres("psql", "-h", "127.0.0.1", "-p", String(port), "-U", "postgres", "-At", "-c", sql)).trim();
}

async function until(what: string, check: () => Promise<boolean>, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(50);
  }
}

if (havePostgres("e2e postgres failover")) {
  const dir = mkdtempSync(join(tmpdir(), "mcq-failover-"));
  if (root) chownSync(dir, Number(Bun.spawnSync(["id", "-u", "postgres"]).stdout.toString()), Number(Bun.spawnSync(["id", "-g", "postgres"]).stdout.toString()));
  const primary = join(dir, "primary");
  const standby = join(dir, "standby");
  afterAll(async () => {
    await stopAll();
    for (const data of [primary, standby]) await asPostgres("pg_ctl", "-D", data, "-m", "immediate", "stop").catch(() => {});
    rmSync(dir, { recursive: true, force: true });
  });

  test("kill -9 of the primary, standby promoted: mcq serves again within 10 s, nothing acknowledged lost", async () => {
    const [p1, p2] = [freePort(), freePort()];
    await asPostgres("initdb", "-D", primary, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8");
    await startPg(dir, primary, p1);
    await asPostgres("pg_basebackup", "-h", "127.0.0.1", "-p", String(p1), "-U", "postgres", "-D", standby, "-R", "-X", "stream", "--no-sync");
    await startPg(dir, standby, p2);
    await until("the standby streaming", async () => (await psql(p1, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")) === "1");
    // Synchronous from here on: a COMMIT returns once the standby has applied it.
    await psql(p1, "ALTER SYSTEM SET synchronous_standby_names = '*'");
    await psql(p1, "ALTER SYSTEM SET synchronous_commit = 'remote_apply'");
    await psql(p1, "SELECT pg_reload_conf()");
    await until("the standby synchronous", async () => (await psql(p1, "SELECT sync_state FROM pg_stat_replication")) === "sync");

    const store = `postgres://postgres@127.0.0.1:${p1},127.0.0.1:${p2}/postgres?schema=failover`;
    const server = await startServer(["--store", store], join(tempDir(), "data"));
    const acknowledged = new Set<string>();
    let stored: number[] = []; // when each STORED arrived (ms)
    let producing = true;
    const producer = async (p: number) => {
      const c = await server.connect();
      for (let seq = 0; producing; seq++) {
        const body = `${p}:${seq}`;
        const reply = await c.call(`set fo 0 0 ${body.length}\r\n${body}\r\n`, 30_000);
        if (reply === "STORED\r\n") {
          acknowledged.add(body);
          stored.push(performance.now());
        } else {
          expect(reply).toStartWith("SERVER_ERROR "); // never a hang, never anything else
          await Bun.sleep(20); // Postgres is away: do not spin on errors
        }
      }
      c.close();
    };
    const producers = Promise.all([0, 1, 2, 3].map(producer));
    await until("some messages stored", async () => acknowledged.size >= 200);

    const postmaster = Number(readFileSync(join(primary, "postmaster.pid"), "utf8").split("\n")[0]);
    const killedAt = performance.now();
    process.kill(postmaster, "SIGKILL");
    const lastBefore = stored[stored.length - 1]!;
    await Bun.sleep(500); // under load without a primary
    stored = [];
    await asPostgres("pg_ctl", "-D", standby, "-w", "promote");
    const promotedAt = performance.now();
    await until("a STORED after the promotion", async () => stored.some((t) => t > promotedAt), 15_000);
    const back = stored.find((t) => t > promotedAt)!;
    await until("more messages stored", async () => stored.length >= 100);
    producing = false;
    await producers;
    console.log(`failover: clients saw no STORED for ${Math.round(back - lastBefore)} ms (kill -9 of the primary at +${Math.round(killedAt - lastBefore)} ms, ` +
      `promotion ${Math.round(promotedAt - killedAt)} ms after the kill, serving ${Math.round(back - promotedAt)} ms after the promotion)`);
    expect(back - promotedAt).toBeLessThan(10_000);

    // Every acknowledged message is on the promoted standby, read back through mcq.
    const c = await Client.connect(server.port);
    const got = new Set<string>();
    for (;;) {
      const reply = await c.call("get fo\r\n", 30_000);
      const m = /^VALUE fo 0 \d+\r\n(\d+:\d+)\r\nEND\r\n$/.exec(reply);
      if (m === null) {
        expect(reply).toBe("END\r\n");
        break;
      }
      got.add(m[1]!);
    }
    const lost = [...acknowledged].filter((b) => !got.has(b));
    expect({ acknowledged: acknowledged.size > 300, lost }).toEqual({ acknowledged: true, lost: [] });
  }, 120_000);
}
