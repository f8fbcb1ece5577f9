/**
 * The package's public API, src/fixture.ts: startServer() in this test's own process, talked to
 * over TCP. Idempotent stop, temp-dir cleanup, isolation of two fixtures, settings, bad input;
 * and, in a child process, that a stopped fixture leaves nothing running and no signal handler.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, readdirSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { startServer, type Mcq } from "../../src/fixture";
import { dropSchemas, freshSchema, havePostgres, pgStoreUrl } from "../pg";
import { cleanup, Client, set, tempDir, value } from "./harness";

const started: Mcq[] = [];
afterAll(() => Promise.all(started.map((mq) => mq.stop())));

async function start(options: Parameters<typeof startServer>[0]): Promise<Mcq> {
  const mq = await startServer(options);
  started.push(mq);
  return mq;
}

/** The fixture's temporary directories that exist now. */
const fixtureDirs = () => readdirSync(tmpdir()).filter((name) => name.startsWith("mcq-fixture-"));

/** Whether something accepts connections on the port. */
function accepts(port: number): Promise<boolean> {
  return new Promise((done) => {
    const socket = connect({ port, host: "127.0.0.1" });
    socket.once("connect", () => (socket.destroy(), done(true)));
    socket.once("error", () => done(false));
  });
}

/** Returns once the server says that `n` gets are waiting (each look awaits its reply). */
async function waiting(mq: Mcq, n: number): Promise<void> {
  const probe = await Client.connect(mq.port);
  for (let i = 0; !(await probe.call("stats\r\n")).includes(`STAT waiters ${n}\r\n`); i++) {
    if (i === 10_000) throw new Error(`never saw ${n} waiting gets`);
  }
  probe.close();
}

describe("startServer", () => {
  test("defaults: a free port on 127.0.0.1 and a temporary SQLite directory that stop() removes", async () => {
    const mq = await start({});
    expect(mq.port).toBeGreaterThan(0);
    expect(mq.address).toBe(`127.0.0.1:${mq.port}`);
    expect(mq.httpUrl).toBeNull();
    expect(mq.dir).not.toBeNull();
    expect(readdirSync(mq.dir!)).toContain("mcq.db");
    const c = await Client.connect(mq.port);
    expect(await c.call(set("jobs", "hello"))).toBe("STORED\r\n");
    expect(await c.call("get jobs\r\n")).toBe(value("jobs", "hello") + "END\r\n");
    await mq.stop();
    expect(await c.closedBy()).toBe("");
    expect(existsSync(mq.dir!)).toBe(false);
    expect(await accepts(mq.port)).toBe(false);
  });

  test("stop() is idempotent: every call returns the same promise, before and after it settles", async () => {
    const mq = await start({ store: "memory" });
    const first = mq.stop();
    expect(mq.stop()).toBe(first);
    await first;
    expect(mq.stop()).toBe(first);
    await mq.stop();
  });

  test("stop() answers a waiting get and keeps { dir }, whose messages (an open one too) the next server finds", async () => {
    const dir = join(tempDir(), "data");
    const a = await start({ store: { dir } });
    expect(a.dir).toBe(dir);
    const c = await Client.connect(a.port);
    expect(await c.call(set("q", "one") + set("q", "two"))).toBe("STORED\r\nSTORED\r\n");
    expect(await c.call("get q/open\r\n")).toBe(value("q/open", "one") + "END\r\n");
    c.write("get empty/t=60000\r\n");
    await waiting(a, 1);
    await a.stop();
    expect(await c.closedBy()).toBe("END\r\n");
    expect(readdirSync(dir)).toContain("mcq.db");

    const b = await start({ store: { dir } });
    const d = await Client.connect(b.port);
    expect(await d.call("get q\r\nget q\r\nget q\r\n")).toBe(value("q", "one") + "END\r\n" + value("q", "two") + "END\r\nEND\r\n");
    d.close();
    await b.stop();
    cleanup(resolve(dir, ".."));
  });

  test("two fixtures in one file share no state", async () => {
    const [a, b, m, n] = await Promise.all([start({}), start({}), start({ store: "memory" }), start({ store: "memory" })]);
    expect(new Set([a.port, b.port, m.port, n.port]).size).toBe(4);
    expect(a.dir).not.toBe(b.dir);
    const clients = await Promise.all([a, b, m, n].map((mq) => Client.connect(mq.port)));
    const [ca, cb, cm, cn] = clients as [Client, Client, Client, Client];
    expect(await ca.call(set("shared", "a"))).toBe("STORED\r\n");
    expect(await cm.call(set("shared", "m") + set("shared", "m2"))).toBe("STORED\r\nSTORED\r\n");
    expect(await cb.call("get shared\r\nstats queue\r\n")).toBe("END\r\nEND\r\n");
    expect(await cn.call("get shared\r\nstats queue\r\n")).toBe("END\r\nEND\r\n");
    expect(await ca.call("stats queue\r\n")).toBe("STAT shared 1/0\r\nEND\r\n");
    expect(await cm.call("stats queue\r\n")).toBe("STAT shared 2/0\r\nEND\r\n");
    // One stopping leaves the others serving.
    await a.stop();
    expect(await cm.call("get shared\r\n")).toBe(value("shared", "m") + "END\r\n");
    for (const c of clients) c.close();
    await Promise.all([b.stop(), m.stop(), n.stop()]);
    expect(existsSync(a.dir!) || existsSync(b.dir!)).toBe(false);
  });

  test("settings are the config table's names and reach the server", async () => {
    const mq = await start({ store: "memory", maxBody: 3, maxOpen: 1, http: { hostname: "127.0.0.1", port: 0 } });
    const c = await Client.connect(mq.port);
    expect(await c.call(set("q", "abcd"))).toBe("SERVER_ERROR object too large for cache\r\n");
    expect(await c.call(set("q", "abc") + set("r", "x"))).toBe("STORED\r\nSTORED\r\n");
    expect(await c.call("get q/open\r\nget r/open\r\n")).toBe(value("q/open", "abc") + "END\r\nCLIENT_ERROR too many open messages on this connection\r\n");
    expect(mq.httpUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    const health = await fetch(`${mq.httpUrl}/healthz`);
    expect([health.status, await health.text()]).toEqual([200, "ok\n"]);
    c.close();
    await mq.stop();
    expect(await fetch(`${mq.httpUrl}/healthz`).then(() => "served", () => "refused")).toBe("refused");
  });

  test("unixSocket: the address is the socket's path", async () => {
    const dir = tempDir();
    const path = join(dir, "mcq.sock");
    const mq = await start({ store: "memory", unixSocket: path });
    expect([mq.port, mq.address]).toEqual([0, path]);
    const reply = await new Promise<string>((done, fail) => {
      const socket = connect({ path }, () => socket.write("version\r\n"));
      socket.once("data", (d) => (socket.destroy(), done(d.toString())));
      socket.once("error", fail);
    });
    expect(reply).toMatch(/^VERSION \d+\.\d+\.\d+\r\n$/);
    await mq.stop();
    cleanup(dir);
  });
});

describe("startServer refuses bad input, leaving nothing behind", () => {
  const cases: [string, Record<string, unknown>, string][] = [
    ["an unknown setting", { maxbody: 5 }, 'unknown setting "maxbody"; the settings are the config table\'s names: host, port,'],
    ["a value of the wrong type", { maxBody: "5" }, 'maxBody must be a whole number ≥ 0, not "5"'],
    ["a number below its minimum", { maxConns: 0 }, "maxConns must be a whole number ≥ 1, not 0"],
    ["a word not among its choices", { sync: "fast" }, 'sync must be one of full, normal, off, not "fast"'],
    ["a bad port", { port: 70000 }, "port must be a whole number from 0 to 65535, not 70000"],
    ["a bad http address", { http: "127.0.0.1:0" }, 'http must be { hostname: string, port: 0-65535 } or null, not "127.0.0.1:0"'],
    ["the data directory as a setting", { home: "/tmp/x" }, "home is not a setting here: the data directory comes from store: { dir }"],
    ["the pid file", { pidFile: "/tmp/x.pid" }, "pidFile is not a setting here"],
    ["a bad store", { store: "disk" }, 'store must be "memory", { dir?: string } or { postgres: url }, not "disk"'],
    ["a Postgres URL that is not one", { store: { postgres: "mysql://localhost/mcq" } }, 'store.postgres must be a postgres:// URL, not "mysql://localhost/mcq"'],
  ];
  for (const [what, options, message] of cases) {
    test(what, async () => {
      const before = fixtureDirs();
      const error = await startServer(options as never).then(() => null, (e: Error) => e);
      expect(error?.message).toStartWith("mcq startServer: ");
      expect(error?.message).toContain(message);
      expect(fixtureDirs()).toEqual(before);
    });
  }

  test("a port in use: the listen error, and the temporary directory is gone", async () => {
    const taken = await start({ store: "memory" });
    const before = fixtureDirs();
    const error = await startServer({ port: taken.port }).then(() => null, (e: Error) => e);
    expect(error?.message).toBe(`cannot listen on 127.0.0.1:${taken.port}: address already in use`);
    expect(fixtureDirs()).toEqual(before);
  });

  test("a data directory another server holds: the lock error", async () => {
    const holder = await start({ store: { dir: join(tempDir(), "data") } });
    const error = await startServer({ store: { dir: holder.dir! } }).then(() => null, (e: Error) => e);
    expect(error?.message).toContain(holder.dir!);
    const c = await Client.connect(holder.port);
    expect(await c.call(set("q", "still served"))).toBe("STORED\r\n");
    c.close();
  });
});

/** Runs in a child process: two fixtures with every timer a setting can start, traffic, stop. */
const CHILD = `
import { startServer } from ${JSON.stringify(resolve(import.meta.dir, "../../src/fixture.ts"))};
import { connect } from "node:net";
const signals = ["SIGTERM", "SIGINT", "SIGHUP"];
const handlers = () => signals.map((s) => process.listenerCount(s)).join(",");
const before = handlers();
const settings = { openTimeoutMs: 100, idleTimeoutS: 60, expiry: true, http: { hostname: "127.0.0.1", port: 0 } };
const servers = [await startServer({ ...settings }), await startServer({ ...settings, store: "memory" })];
for (const mq of servers) {
  const socket = connect(mq.port, "127.0.0.1");
  await new Promise((ok) => socket.once("connect", ok));
  const replies = new Promise((ok) => { let text = ""; socket.on("data", (d) => { text += d; if (text.endsWith("END\\r\\n")) ok(text); }); });
  socket.write("set q 0 0 1\\r\\na\\r\\nget q/open\\r\\n");
  await replies;
  socket.write("get empty/t=600000\\r\\n"); // left waiting: stop() must end it
}
await Promise.all(servers.map((mq) => mq.stop()));
console.log(JSON.stringify({ before, after: handlers(), exitCode: process.exitCode ?? 0 }));
`;

test("a stopped fixture leaves nothing running: the process exits on its own, no signal handler installed", async () => {
  const dir = tempDir();
  const script = join(dir, "child.ts");
  await Bun.write(script, CHILD);
  const proc = Bun.spawn([process.execPath, script], { stdout: "pipe", stderr: "pipe" });
  // Anything left running (a timer, a listener, a socket) would keep it alive past this bound.
  const limit = setTimeout(() => proc.kill("SIGKILL"), 15_000);
  const [out, err, code, signal] = await Promise.all([
    new Response(proc.stdout).text(),
    new Response(proc.stderr).text(),
    proc.exited,
    proc.exited.then(() => proc.signalCode),
  ]);
  clearTimeout(limit);
  expect({ code, signal, err }).toEqual({ code: 0, signal: null, err: "" });
  expect(JSON.parse(out)).toEqual({ before: "0,0,0", after: "0,0,0", exitCode: 0 });
  cleanup(dir);
});

describe("startServer({ store: { postgres } })", () => {
  if (!havePostgres("the fixture on Postgres")) return;
  const schemas: string[] = [];
  afterAll(() => dropSchemas(schemas));

  test("two fixtures on one Postgres share its queues, and stop() leaves no directory", async () => {
    const schema = freshSchema("fixture");
    schemas.push(schema);
    const before = fixtureDirs();
    const [a, b] = [await start({ store: { postgres: pgStoreUrl(schema) } }), await start({ store: { postgres: pgStoreUrl(schema) } })];
    expect([a.dir, b.dir]).toEqual([null, null]);
    const [ca, cb] = [await Client.connect(a.port), await Client.connect(b.port)];
    expect(await ca.call(set("shared", "one") + set("shared", "two"))).toBe("STORED\r\nSTORED\r\n");
    expect(await cb.call("get shared\r\n")).toBe(value("shared", "one") + "END\r\n");
    expect(await ca.call("get shared\r\n")).toBe(value("shared", "two") + "END\r\n");
    expect(await cb.call("get shared\r\n")).toBe("END\r\n");
    await Promise.all([a.stop(), b.stop()]);
    expect(fixtureDirs()).toEqual(before);
  });
});
