/**
 * Postgres servers a test owns (initdb in a temp dir, as the postgres user: Postgres refuses
 * root), for what must not happen to the shared MCQ_TEST_PG: stopping it, fencing it read-only,
 * promoting a standby, bringing an old primary back. The failover and outage tests do the same
 * inline.
 */
import { chownSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const root = process.getuid?.() === 0;

async function bin(name: string): Promise<string> {
  const found = (await Array.fromAsync(new Bun.Glob(`/usr/lib/postgresql/*/bin/${name}`).scan()))[0];
  if (found === undefined) throw new Error(`${name} not found under /usr/lib/postgresql`);
  return found;
}

/** Runs a Postgres program as the postgres user; throws with its output on failure. */
export async function asPostgres(name: string, ...args: string[]): Promise<string> {
  const cmd = [await bin(name), ...args];
  const proc = Bun.spawn(root ? ["runuser", "-u", "postgres", "--", ...cmd] : cmd, { stdout: "pipe", stderr: "pipe" });
  const [out, err, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  if (code !== 0) throw new Error(`${name} ${args.join(" ")}: exit ${code}: ${err}${out}`);
  return out;
}

export const freePort = () => {
  const l = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const port = l.port;
  l.stop(true);
  return port;
};

export interface Cluster {
  port: number;
  data: string;
  /** `host:port`, for a --store URL. */
  host: string;
  start(): Promise<void>;
  stop(mode?: "fast" | "immediate"): Promise<void>;
  /** One statement through psql; its output, trimmed. */
  psql(sql: string): Promise<string>;
}

/** A directory for the test's clusters (owned by postgres), removed by `removeAll`. */
export function clusterDir(): { dir: string; clusters: Cluster[]; removeAll(): Promise<void> } {
  const dir = mkdtempSync(join(tmpdir(), "mcq-cluster-"));
  if (root) chownSync(dir, Number(Bun.spawnSync(["id", "-u", "postgres"]).stdout.toString()), Number(Bun.spawnSync(["id", "-g", "postgres"]).stdout.toString()));
  const clusters: Cluster[] = [];
  return {
    dir,
    clusters,
    async removeAll() {
      for (const c of clusters) await c.stop("immediate").catch(() => {});
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

function cluster(dir: string, name: string, port: number): Cluster {
  const data = join(dir, name);
  const psqlAt = async (sql: string) => (await asPostgres("psql", "-h", "127.0.0.1", "-p", String(port), "-U", "postgres", "-At", "-c", sql)).trim();
  return {
    port,
    data,
    host: `127.0.0.1:${port}`,
    start: () =>
      asPostgres("pg_ctl", "-D", data, "-l", join(dir, `${name}.log`), "-w", "-t", "30",
        "-o", `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c max_connections=50 -c shared_buffers=32MB`, "start").then(() => {}),
    stop: (mode = "fast") => asPostgres("pg_ctl", "-D", data, "-m", mode, "-w", "stop").then(() => {}),
    psql: psqlAt,
  };
}

/** A new primary, started. */
export async function newPrimary(at: ReturnType<typeof clusterDir>, name = "primary"): Promise<Cluster> {
  const c = cluster(at.dir, name, freePort());
  await asPostgres("initdb", "-D", c.data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8");
  await c.start();
  at.clusters.push(c);
  return c;
}

/** A streaming standby of `primary`, started and streaming. */
export async function newStandby(at: ReturnType<typeof clusterDir>, primary: Cluster, name = "standby"): Promise<Cluster> {
  const c = cluster(at.dir, name, freePort());
  await asPostgres("pg_basebackup", "-h", "127.0.0.1", "-p", String(primary.port), "-U", "postgres", "-D", c.data, "-R", "-X", "stream", "--no-sync");
  await c.start();
  at.clusters.push(c);
  await until("the standby streaming", async () => (await primary.psql("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")) === "1");
  return c;
}

export async function until(what: string, check: () => Promise<boolean>, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(50);
  }
}
