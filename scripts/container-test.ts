/**
 * The image in a real engine (issue 14): run by scripts/container-test.sh after it has built
 * mcq:latest, as `bun test ./scripts/container-test.ts` (not a *.test.ts file, so `bun test`
 * alone never runs it without an engine). Every container uses --network host, so all traffic
 * stays on loopback; each listens on a free port given by MCQ_PORT, because other servers share
 * this machine's 22201. Nothing sleeps: each step waits for a log line, a reply, an engine
 * event or an exit.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { chmodSync, chownSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pkg from "../package.json";
import { Client, readLine, set, value } from "../test/e2e/harness";

const ROOT = join(import.meta.dir, "..");
const DOCKER = process.env.DOCKER ?? "docker";
const IMAGE = `${process.env.MCQ_IMAGE ?? "mcq"}:latest`;
const RUN = `mcq-ct-${process.pid}`; // label and name prefix of everything made here
let made = 0;

async function docker(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const proc = Bun.spawn([DOCKER, ...args], { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  const [stdout, stderr, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  return { code, stdout, stderr };
}

async function ok(...args: string[]): Promise<string> {
  const r = await docker(...args);
  if (r.code !== 0) throw new Error(`docker ${args.join(" ")}: exit ${r.code}: ${r.stderr.trim()}`);
  return r.stdout.trim();
}

function freePort(): number {
  const probe = Bun.listen({ hostname: "0.0.0.0", port: 0, socket: { data() {} } });
  const port = probe.port;
  probe.stop(true);
  return port;
}

interface Container {
  id: string;
  port: number;
  /** The server's listening line. */
  listening: string;
}

/** docker run -d with --network host on a free port; waits for the listening line in its logs. */
async function run(runArgs: string[], serverArgs: string[] = []): Promise<Container> {
  const port = freePort();
  const id = await ok("run", "-d", "--network", "host", "--label", RUN, "--name", `${RUN}-${++made}`, "-e", `MCQ_PORT=${port}`,
    ...runArgs, IMAGE, ...serverArgs);
  const logs = Bun.spawn([DOCKER, "logs", "-f", id], { stdin: "ignore", stdout: "pipe", stderr: "ignore" });
  const listening = await readLine(logs.stdout, (l) => l.includes(" listening on "));
  logs.kill();
  if (listening === null) throw new Error(`no listening line: ${(await docker("logs", id)).stderr}`);
  return { id, port, listening };
}

async function volume(): Promise<string> {
  return ok("volume", "create", "--label", RUN, `${RUN}-v${++made}`);
}

const STORED = "STORED\r\n";

beforeAll(async () => {
  await ok("image", "inspect", IMAGE); // a clear failure if the image was not built
});

afterAll(async () => {
  const ids = (await docker("ps", "-aq", "--filter", `label=${RUN}`)).stdout.split("\n").filter(Boolean);
  if (ids.length > 0) await docker("rm", "-f", "-v", ...ids); // -v: their anonymous /data volumes too
  const vols = (await docker("volume", "ls", "-q", "--filter", `label=${RUN}`)).stdout.split("\n").filter(Boolean);
  if (vols.length > 0) await docker("volume", "rm", "-f", ...vols);
});

test("the image: user 65532, /data volume, MCQ_* defaults instead of a CMD, SIGTERM, HEALTHCHECK by mcq health", async () => {
  const config = JSON.parse(await ok("image", "inspect", "-f", "{{json .Config}}", IMAGE));
  expect(config.User).toBe("65532:65532");
  expect(Object.keys(config.Volumes)).toEqual(["/data"]);
  expect(config.Env).toEqual(expect.arrayContaining(["MCQ_LISTEN=0.0.0.0", "MCQ_PORT=22201", "MCQ_HOME=/data"]));
  expect(config.Entrypoint).toEqual(["/mcq"]);
  expect(config.Cmd ?? null).toBeNull();
  expect(config.StopSignal).toBe("SIGTERM");
  expect(config.Healthcheck.Test).toEqual(["CMD", "/mcq", "health"]);
});

test("the image holds the released binary: its hash is the mcq-linux-x64 line of dist/SHA256SUMS (the README's check)", async () => {
  const version = await ok("run", "--rm", "--network", "none", "--label", RUN, IMAGE, "--version");
  expect(version).toContain(pkg.version);
  const id = await ok("create", "--network", "none", "--label", RUN, IMAGE);
  const tar = Bun.spawn([DOCKER, "cp", `${id}:/mcq`, "-"], { stdin: "ignore", stdout: "pipe", stderr: "inherit" });
  const untar = Bun.spawn(["tar", "-xO"], { stdin: tar.stdout, stdout: "pipe" });
  const hasher = new Bun.CryptoHasher("sha256");
  hasher.update(await new Response(untar.stdout).bytes());
  expect(await untar.exited).toBe(0);
  const sums = await Bun.file(join(ROOT, "dist/SHA256SUMS")).text();
  expect(sums).toContain(`${hasher.digest("hex")}  mcq-linux-x64\n`);
});

test("extra docker run arguments add to the defaults: all interfaces, /data, as 65532, on a fresh named volume", async () => {
  const c = await run(["-v", `${await volume()}:/data`], ["-v", "--max-open", "5"]);
  expect(c.listening).toEndWith(` listening on 0.0.0.0:${c.port}`);
  const client = await Client.connect(c.port);
  expect(await client.call(set("extra", "x") + "get extra\r\n")).toBe(STORED + value("extra", "x") + "END\r\n");
  client.close();
  const logs = await docker("logs", c.id);
  expect(logs.stderr).toContain("; data in /data, sync full, ");
  expect(await ok("exec", c.id, "/mcq", "health")).toStartWith(`mcq health: 127.0.0.1:${c.port} answered VERSION `);
  const top = await ok("top", c.id, "-o", "pid,uid,args"); // the engine needs the pid column
  expect(top.split("\n")[1]!.trim().split(/\s+/).slice(1).join(" ")).toBe("65532 /mcq -v --max-open 5");
});

test("the health check turns healthy", async () => {
  const since = await ok("system", "info", "-f", "{{.SystemTime}}");
  const c = await run(["-v", `${await volume()}:/data`, "--health-interval", "500ms", "--health-start-period", "0s"]);
  const events = Bun.spawn([DOCKER, "events", "--since", since, "--filter", `container=${c.id}`, "--filter", "event=health_status"],
    { stdin: "ignore", stdout: "pipe", stderr: "ignore" });
  const event = await readLine(events.stdout, (l) => l.includes("health_status"));
  events.kill();
  expect(event).toContain("health_status: healthy");
  const health = JSON.parse(await ok("inspect", "-f", "{{json .State.Health}}", c.id));
  expect(health.Status).toBe("healthy");
  expect(health.Log[0].ExitCode).toBe(0);
  expect(health.Log[0].Output).toStartWith(`mcq health: 127.0.0.1:${c.port} answered VERSION `);
});

test("--read-only with a volume at /data: serves, stores, and stops cleanly", async () => {
  const vol = await volume();
  const first = await run(["--read-only", "-v", `${vol}:/data`]);
  const a = await Client.connect(first.port);
  expect(await a.call(set("ro", "kept"))).toBe(STORED);
  a.close();
  await ok("stop", first.id);
  expect(await ok("inspect", "-f", "{{.State.ExitCode}}", first.id)).toBe("0");
  const second = await run(["--read-only", "-v", `${vol}:/data`]);
  const b = await Client.connect(second.port);
  expect(await b.call("get ro\r\n")).toBe(value("ro", "kept") + "END\r\n");
  b.close();
});

test("docker stop: exit 0 well within its timeout, the stop line in docker logs, and the messages kept", async () => {
  const vol = await volume();
  const c = await run(["-v", `${vol}:/data`]);
  const client = await Client.connect(c.port);
  expect(await client.call(set("stop", "1") + set("stop", "2"))).toBe(STORED + STORED);
  const started = performance.now();
  await ok("stop", "-t", "10", c.id);
  const seconds = (performance.now() - started) / 1000;
  expect(await ok("inspect", "-f", "{{.State.ExitCode}}", c.id)).toBe("0"); // 137 had the engine had to kill it
  expect(seconds).toBeLessThan(10);
  expect((await docker("logs", c.id)).stderr).toMatch(/ SIGTERM: stopping/);
  const again = await run(["-v", `${vol}:/data`]);
  const d = await Client.connect(again.port);
  expect(await d.call("get stop\r\nget stop\r\nget stop\r\n")).toBe(value("stop", "1") + "END\r\n" + value("stop", "2") + "END\r\nEND\r\n");
  d.close();
});

test("a bind mount works once owned by 65532, or run as its owner with --user; a root-owned one stops the start with exit 1 naming /data", async () => {
  const dir = mkdtempSync(join(tmpdir(), "mcq-bind-"));
  chmodSync(dir, 0o755);
  try {
    const refused = await docker("run", "--rm", "--network", "host", "--label", RUN, "-e", `MCQ_PORT=${freePort()}`, "-v", `${dir}:/data`, IMAGE);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/^mcq: .*\/data.*\n$/);
    chownSync(dir, 65532, 65532);
    const c = await run(["-v", `${dir}:/data`]);
    const client = await Client.connect(c.port);
    expect(await client.call(set("bind", "x"))).toBe(STORED);
    client.close();
    await ok("stop", c.id);
    expect(await Bun.file(join(dir, "mcq.db")).exists()).toBe(true);
    for (const f of ["", ...readdirSync(dir)]) chownSync(join(dir, f), 1234, 1234); // a directory whose files are 1234's
    const owner = await run(["--user", "1234:1234", "-v", `${dir}:/data`]); // the README's --user "$(stat -c %u:%g dir)"
    const d = await Client.connect(owner.port);
    expect(await d.call("get bind\r\n")).toBe(value("bind", "x") + "END\r\n");
    d.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

/**
 * One connection pipelining sets of `${queue}-${n}` in batches until the server goes away;
 * counts the STORED replies in acked[i], and calls `progress` after each batch.
 */
async function load(port: number, queue: string, acked: number[], i: number, progress: () => void): Promise<string[]> {
  const client = await Client.connect(port);
  const sent: string[] = [];
  while (!client.closed) {
    const batch = Array.from({ length: 50 }, (_, k) => `${queue}-${sent.length + k}`);
    sent.push(...batch);
    client.write(batch.map((b) => set(queue, b)).join(""));
    const got = await client.until((b) => b.length >= STORED.length * batch.length, 30_000);
    acked[i]! += got.toString("latin1").split(STORED).length - 1;
    progress();
  }
  return sent;
}

test("docker kill -s KILL under load, then a restart on the same volume: no acknowledged message lost", async () => {
  const vol = await volume();
  const c = await run(["-v", `${vol}:/data`]);
  const queues = ["k0", "k1", "k2", "k3"];
  const acked = queues.map(() => 0);
  // Kill once a few thousand sets are acknowledged, with more in flight on every connection.
  const enough = Promise.withResolvers<void>();
  const progress = () => acked.reduce((a, b) => a + b, 0) >= 4000 && enough.resolve();
  const loaders = queues.map((q, i) => load(c.port, q, acked, i, progress));
  await Promise.race([enough.promise, Promise.all(loaders)]);
  await ok("kill", "-s", "KILL", c.id);
  const sent = await Promise.all(loaders);
  expect(await ok("inspect", "-f", "{{.State.ExitCode}}", c.id)).toBe("137");
  const again = await run(["-v", `${vol}:/data`]);
  const client = await Client.connect(again.port);
  let survived = 0;
  for (const [i, q] of queues.entries()) {
    const got: string[] = [];
    for (;;) {
      const reply = await client.call(`get ${q}\r\n`.repeat(500));
      const bodies = [...reply.matchAll(/VALUE \S+ 0 \d+\r\n(\S+)\r\n/g)].map((m) => m[1]!);
      got.push(...bodies);
      if (bodies.length < 500) break;
    }
    // What survived is what was sent, in order, from the first: every acknowledged set, and perhaps
    // some that were in flight; none lost, none twice.
    expect(got.length).toBeGreaterThanOrEqual(acked[i]!);
    expect(got).toEqual(sent[i]!.slice(0, got.length));
    survived += got.length;
  }
  const total = acked.reduce((a, b) => a + b, 0);
  console.log(`kill -s KILL under load: ${total} sets acknowledged, ${survived} messages after the restart, none lost`);
  client.close();
}, 120_000);
