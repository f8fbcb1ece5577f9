/** The pure parts of tracker 11: -l values, TLS settings and -o, rights and their globs; the password check's calls. */
import { describe, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { createAuth, dummyHash } from "../../src/auth";
import type { Context } from "../../src/context";
import type { Logger } from "../../src/log";
import type { Request } from "../../src/protocol/types";
import { createSession } from "../../src/session";
import { tempDir } from "../e2e/harness";
import { parseListen } from "../../src/listeners";
import { parseRequest } from "../../src/protocol/parse";
import { allows, needs, parseRights } from "../../src/rights";
import { extendedOptions, tlsSettings } from "../../src/tls";

test("-l values: host, host:port, notls:, IPv6 with and without brackets; bad ones refused", () => {
  expect(parseListen("127.0.0.1")).toEqual({ host: "127.0.0.1", port: null, plain: false });
  expect(parseListen("0.0.0.0:22201")).toEqual({ host: "0.0.0.0", port: 22201, plain: false });
  expect(parseListen("notls:localhost:0")).toEqual({ host: "localhost", port: 0, plain: true });
  expect(parseListen("[::1]:5")).toEqual({ host: "::1", port: 5, plain: false });
  expect(parseListen("notls:::1")).toEqual({ host: "::1", port: null, plain: true });
  for (const bad of ["", "notls:", "h:70000", "[::1", "a:b:c]"]) expect(parseListen(bad)).toBeNull();
});

test("TLS settings: long forms win over -o; verify modes 0-3; what is missing is said", () => {
  const x = extendedOptions("ssl_chain_cert=c.pem,ssl_key=k.pem", extendedOptions("ssl_ca_cert=ca.pem,ssl_verify_mode=3", undefined));
  expect(tlsSettings({ enable: true, extended: x })).toEqual({ cert: "c.pem", key: "k.pem", ca: "ca.pem", verify: "require" });
  expect(tlsSettings({ enable: true, cert: "long.pem", extended: x })!.cert).toBe("long.pem");
  expect(tlsSettings({ enable: true, extended: { ...x, ssl_verify_mode: "1" } })!.verify).toBe("request");
  expect(tlsSettings({ enable: false })).toBeNull();
  expect(() => extendedOptions("ssl_key", undefined)).toThrow("-o ssl_key needs a value (ssl_key=...)");
  expect(() => tlsSettings({ enable: true, cert: "c" })).toThrow("-Z needs --tls-cert and --tls-key");
});

test("globs: * matches any bytes, . and + included; everything else is literal", () => {
  const r = parseRights("read=jobs.*,read=a+b,write=*x*,admin=tmp.*.q");
  expect(["jobs.", "jobs.a.b", "a+b"].map((q) => allows(r, "read", q))).toEqual([true, true, true]);
  expect(["jobsX1", "aab", "jobs"].map((q) => allows(r, "read", q))).toEqual([false, false, false]);
  expect(["x", "axb", "b"].map((q) => allows(r, "write", q))).toEqual([true, true, false]);
  expect(["tmp.1.q", "tmp..q", "tmp.1.qq"].map((q) => allows(r, "admin", q))).toEqual([true, true, false]);
  expect(allows(r, "admin", null)).toBe(false);
  expect(allows(parseRights("admin=**"), "admin", null)).toBe(true);
  expect(allows(null, "admin", null)).toBe(true);
  expect(() => parseRights("read=")).toThrow("the glob is empty");
  expect(() => parseRights("own=x")).toThrow("is not read=, write= or admin=");
});

test("what each request needs", () => {
  const req = (line: string) => {
    const p = parseRequest(Buffer.from(line), 0, line.length, { maxLine: 8192, maxBody: 1 << 20 });
    if (p.type !== "request") throw new Error(`not a request: ${line}`);
    return p.req;
  };
  expect(needs(req("get a b/open\r\n"))).toEqual([["read", "a"], ["read", "b"]]);
  expect(needs(req("set q 0 0 1\r\nx\r\n"))).toEqual([["write", "q"]]);
  expect(needs(req("delete q\r\n"))).toEqual([["admin", "q"]]);
  expect(needs(req("flush_all\r\n"))).toEqual([["admin", null]]);
  expect(needs(req("stats queue q\r\n"))).toEqual([["read", "q"]]);
  expect(needs(req("stats\r\n"))).toEqual([]);
  expect(needs(req("refresh_certs\r\n"))).toEqual([["admin", null]]);
});

describe("timing: a user not in the file costs a hash check, as a wrong password does", () => {
  const argon = Bun.password.hashSync("right", { algorithm: "argon2id", memoryCost: 4096, timeCost: 3 });
  const bcrypt = Bun.password.hashSync("right", { algorithm: "bcrypt", cost: 4 });
  const quiet = { error() {}, warn() {}, info() {}, debug() {}, trace() {}, verbosity: 0 } as Logger;
  /** An authfile and a verifier that records each hash it is asked to check. */
  function counted(lines: string) {
    const path = join(tempDir(), "authfile");
    writeFileSync(path, lines);
    const calls: string[] = [];
    const verify = (password: string, hash: string) => {
      calls.push(hash);
      return Bun.password.verify(password, hash);
    };
    return { auth: createAuth(path, 10, quiet, verify), calls };
  }
  /** A login as the first set of a connection: its reply, once the session's job is done. */
  async function login(auth: ReturnType<typeof createAuth>, token: string): Promise<string> {
    const s = createSession();
    let resumed!: () => void;
    const done = new Promise<void>((ok) => (resumed = ok));
    const ctx = { resume: () => resumed() } as unknown as Context;
    const req = { kind: "set", key: "auth", flags: 0, exptime: 0, noreply: false, data: Buffer.from(token) } as unknown as Request;
    if (auth.guard(ctx, s, req) === "wait") {
      await done;
      expect(s.job!()).not.toBe(false); // the check is done: the job answers now
    }
    return s.held.map((r) => r.pieces.map((p) => (typeof p === "string" ? p : Buffer.from(p).toString())).join("")).join("");
  }

  test("dummy hashes keep the algorithm and cost, and match nothing", async () => {
    expect(dummyHash(argon)).toStartWith("$argon2id$v=19$m=4096,t=3,p=1$");
    expect(dummyHash(bcrypt)).toStartWith("$2b$04$");
    expect(dummyHash(bcrypt)).toHaveLength(bcrypt.length);
    for (const d of [dummyHash(argon), dummyHash(bcrypt)]) expect(await Bun.password.verify("right", d)).toBe(false);
  });

  test("login: unknown user and wrong password each run one verify of the same cost; right one logs in", async () => {
    const { auth, calls } = counted(`alice:${argon}\nbob:${bcrypt}\n`);
    expect(await login(auth, "mallory right")).toBe("CLIENT_ERROR authentication failure\r\n");
    expect(calls).toEqual([dummyHash(argon)]);
    expect(await login(auth, "alice wrong")).toBe("CLIENT_ERROR authentication failure\r\n");
    expect(calls).toEqual([dummyHash(argon), argon]);
    expect(await login(auth, "alice right")).toBe("STORED\r\n");
    expect(calls).toHaveLength(3);
  });

  test("HTTP basic auth: unknown user, and a user whose rights refuse, still run the verify", async () => {
    const { auth, calls } = counted(`alice:${argon}:read=jobs.*\nroot:${argon}\n`);
    expect(await auth.verify("nobody", "right")).toBe(false);
    expect(await auth.verify("alice", "right")).toBe(false);
    expect(await auth.verify("root", "right")).toBe(true);
    expect(calls).toEqual([dummyHash(argon), argon, argon]);
  });

  test("a file of plain passwords verifies no hash: every check is the same constant-time compare", async () => {
    const { auth, calls } = counted("alice:pw\n");
    expect(await login(auth, "mallory pw")).toBe("CLIENT_ERROR authentication failure\r\n");
    expect(await login(auth, "alice pw")).toBe("STORED\r\n");
    expect(calls).toEqual([]);
  });
});
