/**
 * `mcq health` (the container's HEALTHCHECK): exit 0 and one line when the server answers
 * `version`; exit 1 and one line naming the address and the reason when it does not; and the
 * MCQ_* variables that configure the server in the image also configure the check, so extra
 * `docker run` arguments leave both on the image's defaults.
 */
import { afterAll, expect, test } from "bun:test";
import { join } from "node:path";
import { readLine, serverCommand, startServer, stopAll, tempDir } from "./harness";

afterAll(stopAll);

/** Runs the server command with these arguments and extra environment, to its exit. */
async function run(args: string[], env: Record<string, string> = {}) {
  const proc = Bun.spawn([...serverCommand(), ...args], { stdin: "ignore", stdout: "pipe", stderr: "pipe", env: { ...process.env, ...env } });
  const [stdout, stderr, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  return { stdout, stderr, code };
}

/** A TCP listener that is not mcq: it answers each connection with `reply` (null: never answers). */
function fakeServer(reply: string | null) {
  return Bun.listen({
    hostname: "127.0.0.1",
    port: 0,
    socket: { open: (s) => void (reply !== null && s.write(reply)), data: () => {} },
  });
}

const VERSION = /^VERSION \d+\.\d+\.\d+$/;

test("a running server: exit 0, one line on stdout naming the address and the reply", async () => {
  const s = await startServer();
  const r = await run(["health", "-p", String(s.port)]);
  expect([r.code, r.stderr]).toEqual([0, ""]);
  const m = /^mcq health: 127\.0\.0\.1:(\d+) answered (VERSION [^ ]+) in [\d.]+ ms\n$/.exec(r.stdout);
  expect(m?.[1]).toBe(String(s.port));
  expect(m?.[2]).toMatch(VERSION);
});

test("MCQ_LISTEN=0.0.0.0 and MCQ_PORT (the image's settings) are read, and the wildcard is reached on loopback", async () => {
  const s = await startServer();
  const r = await run(["health"], { MCQ_LISTEN: "0.0.0.0", MCQ_PORT: String(s.port) });
  expect(r.code).toBe(0);
  expect(r.stdout).toStartWith(`mcq health: 127.0.0.1:${s.port} answered VERSION `);
});

test("a unix socket, by -s or MCQ_UNIX_SOCKET", async () => {
  const path = join(tempDir(), "mcq.sock");
  const proc = Bun.spawn([...serverCommand(), "-s", path, "-H", join(tempDir(), "data")], { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  expect(await readLine(proc.stdout, (l) => l.includes(" listening on "))).toEndWith(` listening on ${path}`);
  const byFlag = await run(["health", "-s", path]);
  const byEnv = await run(["health"], { MCQ_UNIX_SOCKET: path });
  proc.kill("SIGTERM");
  expect(await proc.exited).toBe(0);
  for (const r of [byFlag, byEnv]) {
    expect(r.code).toBe(0);
    expect(r.stdout).toStartWith(`mcq health: ${path} answered VERSION `);
  }
});

test("nothing listening: exit 1, one line on stderr naming the address and the reason", async () => {
  const s = await startServer();
  const port = s.port;
  expect(await s.kill()).toBe(0);
  const r = await run(["health", "-p", String(port)]);
  expect(r).toEqual({ code: 1, stdout: "", stderr: `mcq health: 127.0.0.1:${port}: connect ECONNREFUSED 127.0.0.1:${port}\n` });
  const missing = join(tempDir(), "no.sock");
  const u = await run(["health", "-s", missing]);
  expect(u).toEqual({ code: 1, stdout: "", stderr: `mcq health: ${missing}: connect ENOENT ${missing}\n` });
});

test("a listener that never answers: exit 1 after --timeout, saying so", async () => {
  const fake = fakeServer(null);
  const started = performance.now();
  const r = await run(["health", "-p", String(fake.port), "--timeout", "300"]);
  fake.stop(true);
  expect(r).toEqual({ code: 1, stdout: "", stderr: `mcq health: 127.0.0.1:${fake.port}: no reply to version within 300 ms\n` });
  expect(performance.now() - started).toBeGreaterThanOrEqual(300);
});

test("a listener that is not mcq: exit 1 quoting its reply", async () => {
  const fake = fakeServer("-ERR unknown command\r\n");
  const r = await run(["health", "-p", String(fake.port)]);
  fake.stop(true);
  expect(r).toEqual({ code: 1, stdout: "", stderr: `mcq health: 127.0.0.1:${fake.port}: unexpected reply to version: "-ERR unknown command"\n` });
});

test("bad flags exit 2 with one line", async () => {
  expect(await run(["health", "-p", "0"])).toEqual({
    code: 2,
    stdout: "",
    stderr: "mcq health: option '-p, --port <num>' argument '0' is invalid. not a port from 1 to 65535 (see mcq help health)\n",
  });
  expect((await run(["health", "--timeout", "soon"])).code).toBe(2);
  expect((await run(["health", "extra"])).code).toBe(2);
});

test("the server's MCQ_LISTEN / MCQ_PORT / MCQ_HOME stay in force when extra arguments are given (the image's entrypoint)", async () => {
  const home = join(tempDir(), "from-env");
  const proc = Bun.spawn([...serverCommand(), "-v", "--max-open", "5"], {
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
    env: { ...process.env, MCQ_LISTEN: "127.0.0.1", MCQ_PORT: "0", MCQ_HOME: home },
  });
  const line = await readLine(proc.stdout, (l) => l.includes(" listening on "));
  expect(line).toMatch(/ listening on 127\.0\.0\.1:\d+$/);
  const port = /:(\d+)$/.exec(line!)![1]!;
  expect((await run(["health"], { MCQ_LISTEN: "127.0.0.1", MCQ_PORT: port })).code).toBe(0);
  proc.kill("SIGTERM");
  expect(await proc.exited).toBe(0);
  expect(await Bun.file(join(home, "mcq.db")).exists()).toBe(true);
});
