/**
 * -Y authentication and queue rights (tracker 11), over raw TCP and through pymemcache: the
 * login set, its three answers, unauthenticated commands, three failures closing the connection,
 * the auth timeout, hashed entries, rights by glob, `stats queue` filtered, SIGHUP reload.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { Client, set, startServer, stopAll, tempDir, type Running } from "./harness";
import { logged } from "./tls-harness";

const PYTHON = "/usr/bin/python3";
const hasPymemcache = Bun.spawnSync([PYTHON, "-c", "import pymemcache"]).exitCode === 0;

const UNAUTH = "CLIENT_ERROR unauthenticated\r\n";
const FAILED = "CLIENT_ERROR authentication failure\r\n";
const BAD_TOKEN = "CLIENT_ERROR bad authentication token format\r\n";
const DENIED = "CLIENT_ERROR permission denied\r\n";

let dir: string;
let authfile: string;
let server: Running;
beforeAll(async () => {
  dir = tempDir("mcq-auth-");
  authfile = join(dir, "users");
  const hash = await Bun.password.hash("hashed pass", { algorithm: "argon2id", memoryCost: 4096, timeCost: 1 });
  const bcrypt = await Bun.password.hash("bpass", { algorithm: "bcrypt", cost: 4 });
  writeFileSync(authfile, [
    "# users of the tests",
    "root:rootpw",
    "carol:" + hash,
    "dave:" + bcrypt + ":read=jobs.*",
    "reader:rpw:read=jobs.*,read=logs",
    "writer:wpw:write=jobs.*",
    "admin:apw:read=*,write=*,admin=tmp.*",
    "colon:pa:ss",
    "",
  ].join("\n"));
  server = await startServer(["-Y", authfile, "--auth-timeout", "1"]);
});
afterAll(stopAll);

const login = (user: string, password: string) => set("auth", `${user} ${password}`);

/** Before login even `version` is refused, so Client.call cannot mark the end: one line is awaited. */
async function line(c: Client, data: string): Promise<string> {
  c.write(data);
  return (await c.until((b) => b.toString("latin1").endsWith("\r\n"))).toString("latin1");
}

async function as(user: string, password: string): Promise<Client> {
  const c = await server.connect();
  expect(await c.call(login(user, password))).toBe("STORED\r\n");
  return c;
}

describe("login", () => {
  test("before login every command answers unauthenticated; quit still quits", async () => {
    const c = await server.connect();
    c.write("get q\r\nstats\r\ndelete q\r\nflush_all\r\nstats queue\r\nrefresh_certs\r\n");
    expect((await c.until((b) => b.toString().split("\r\n").length > 6)).toString()).toBe(UNAUTH.repeat(6));
    c.write("quit\r\n");
    expect(await c.closedBy()).toBe("");
  });

  test("success is STORED and is not enqueued; the session then works", async () => {
    const c = await as("root", "rootpw");
    expect(await c.call("stats queue\r\n")).toBe("END\r\n");
    expect(await c.call(set("auth", "now a message"))).toBe("STORED\r\n");
    expect(await c.call("get auth\r\n")).toBe("VALUE auth 0 13\r\nnow a message\r\nEND\r\n");
    c.close();
  });

  test("a password holding ':' (no rights field) logs in", async () => {
    (await as("colon", "pa:ss")).close();
  });

  test("failure, malformed token, and the third failure closes the connection", async () => {
    const c = await server.connect();
    expect(await line(c, login("root", "wrong"))).toBe(FAILED);
    expect(await line(c, set("auth", "rootpw"))).toBe(BAD_TOKEN);
    c.write(login("nobody", "x"));
    expect(await c.closedBy()).toBe(FAILED);
    const log = await logged(server, "closing after 3 failures");
    expect(log).toMatch(/authentication failure from 127\.0\.0\.1: wrong password for user root/);
    expect(log).toContain("authentication failure from 127.0.0.1: unknown user nobody");
    expect(log).not.toContain("wrong\n"); // never the password
  });

  test("hashed entries: argon2id and bcrypt; a login pipelined with commands answers in order", async () => {
    const c = await server.connect();
    expect(await line(c, login("carol", "hashed nope"))).toBe(FAILED);
    expect(await c.call(login("carol", "hashed pass") + set("hq", "h") + "get hq\r\n")).toBe("STORED\r\nSTORED\r\nVALUE hq 0 1\r\nh\r\nEND\r\n");
    c.close();
    // Three failed hashed logins close the connection too (the check ends as the session's job).
    const e = await server.connect();
    expect(await line(e, login("carol", "x 1"))).toBe(FAILED);
    expect(await line(e, login("carol", "x 2"))).toBe(FAILED);
    e.write(login("carol", "x 3"));
    expect(await e.closedBy()).toBe(FAILED);
    const d = await as("dave", "bpass");
    expect(await d.call("get jobs.none\r\n")).toBe("END\r\n");
    d.close();
  });

  test("a connection that does not log in within --auth-timeout is closed", async () => {
    const c = await server.connect();
    const started = Date.now();
    expect(await c.closedBy(5000)).toBe("");
    expect(Date.now() - started).toBeGreaterThanOrEqual(900);
    await logged(server, "not logged in within 1 s; closing");
  });

  test.skipIf(!hasPymemcache && !process.env.CI)("pymemcache: set('auth', 'user pass') first", () => {
    const script = `
from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheClientError
c = Client(("127.0.0.1", ${server.port}))
try:
    c.get("py")
except MemcacheClientError as e:
    print("before:", e)
print(c.set("auth", "root rootpw", noreply=False))
c.set("py", b"body", noreply=False)
print(c.get("py"))
bad = Client(("127.0.0.1", ${server.port}))
try:
    bad.set("auth", "root nope", noreply=False)
except MemcacheClientError as e:
    print("bad:", e)
`;
    const r = Bun.spawnSync([PYTHON, "-c", script]);
    expect(r.stderr.toString()).toBe("");
    expect(r.stdout.toString()).toBe("before: b'unauthenticated'\nTrue\nb'body'\nbad: b'authentication failure'\n");
  });
});

describe("queue rights", () => {
  test("read-only: get, peek, open, close in its globs; set, delete, flush_all refused", async () => {
    const root = await as("root", "rootpw");
    await root.call(set("jobs.a", "1") + set("jobs.a", "2") + set("secret", "s"));
    const c = await as("reader", "rpw");
    expect(await c.call(set("jobs.a", "3"))).toBe(DENIED);
    expect(await c.call("get jobs.a/peek\r\n")).toBe("VALUE jobs.a/peek 0 1\r\n1\r\nEND\r\n");
    expect(await c.call("get jobs.a/open\r\nget jobs.a/close\r\n")).toBe("VALUE jobs.a/open 0 1\r\n1\r\nEND\r\nEND\r\n");
    expect(await c.call("get secret\r\n")).toBe(DENIED);
    expect(await c.call("get jobs.a secret\r\n")).toBe(DENIED); // all keys or nothing
    expect(await c.call("delete jobs.a\r\nflush jobs.a\r\nflush_all\r\nstats reset\r\n")).toBe(DENIED.repeat(4));
    expect(await c.call("get logs\r\n")).toBe("END\r\n"); // `logs` exactly
    expect(await c.call("get logs.x\r\n")).toBe(DENIED);
    expect(await c.call("stats queue secret\r\n")).toBe(DENIED);
    // Nothing changed: root still sees it all.
    expect(await root.call("get jobs.a\r\nget secret\r\n")).toBe("VALUE jobs.a 0 1\r\n2\r\nEND\r\nVALUE secret 0 1\r\ns\r\nEND\r\n");
    c.close();
    root.close();
  });

  test("write-only: set in its glob, nothing else; noreply refusals stay silent", async () => {
    const c = await as("writer", "wpw");
    expect(await c.call(set("jobs.w", "x"))).toBe("STORED\r\n");
    expect(await c.call(set("other", "x"))).toBe(DENIED);
    expect(await c.call("set other 0 0 1 noreply\r\nx\r\n")).toBe("");
    expect(await c.call("get jobs.w\r\n")).toBe(DENIED);
    c.close();
    const root = await as("root", "rootpw");
    expect(await root.call("get other\r\nget jobs.w\r\n")).toBe("END\r\nVALUE jobs.w 0 1\r\nx\r\nEND\r\n");
    root.close();
  });

  test("admin: delete and flush inside its glob only; flush_all needs admin=*", async () => {
    const c = await as("admin", "apw");
    expect(await c.call(set("tmp.1", "x") + set("keep", "k"))).toBe("STORED\r\nSTORED\r\n");
    expect(await c.call("flush tmp.1\r\ndelete tmp.1\r\n")).toBe("OK\r\nDELETED\r\n");
    expect(await c.call("delete keep\r\nflush_all\r\n")).toBe(DENIED + DENIED);
    expect(await c.call("get keep\r\n")).toBe("VALUE keep 0 1\r\nk\r\nEND\r\n");
    c.close();
  });

  test("stats queue lists only the queues the user may read", async () => {
    const root = await as("root", "rootpw");
    await root.call(set("jobs.s1", "1") + set("logs", "l") + set("zzz", "z"));
    const all = await root.call("stats queue\r\n");
    expect(all).toContain("STAT zzz ");
    const c = await as("reader", "rpw");
    const mine = (await c.call("stats queue\r\n")).split("\r\n").filter((l) => l.startsWith("STAT ")).map((l) => l.split(" ")[1]);
    expect(mine.length).toBeGreaterThan(0);
    expect(mine.every((q) => q!.startsWith("jobs.") || q === "logs")).toBe(true);
    expect(mine).toContain("jobs.s1");
    expect(mine).toContain("logs");
    c.close();
    root.close();
  });

  test("SIGHUP reloads the file; logged-in connections keep their user, with the new rights", async () => {
    const c = await as("writer", "wpw");
    const before = await Bun.file(authfile).text();
    writeFileSync(authfile, before.replace("writer:wpw:write=jobs.*", "writer:wpw:write=other.*") + "newbie:npw\n");
    server.proc.kill("SIGHUP");
    await logged(server, `SIGHUP: reloaded the authfile ${authfile}`);
    expect(await c.call(set("other.1", "x"))).toBe("STORED\r\n");
    expect(await c.call(set("jobs.1", "x"))).toBe(DENIED);
    (await as("newbie", "npw")).close();
    writeFileSync(authfile, "broken line\n");
    server.proc.kill("SIGHUP");
    await logged(server, "SIGHUP: cannot reload the authfile");
    (await as("newbie", "npw")).close(); // the old users stay
    writeFileSync(authfile, before);
    c.close();
  });
});
