/**
 * The security settings from outside (tracker 11): flags, MCQ_* variables and the config file;
 * each bad one refused in one line with its exit code; `mcq passwd`; the warning for a server
 * others can reach with neither -Y nor TLS; HTTP basic auth and HTTPS; -Y on the unix socket.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Client, runCommand, serverCommand, set, startServer, stopAll, tempDir } from "./harness";
import { logged, makeCerts, startListeners, tlsClient, type Certs, type Multi } from "./tls-harness";

let certs: Certs;
let dir: string;
let authfile: string;
const extra: Multi[] = [];
beforeAll(() => {
  certs = makeCerts();
  dir = tempDir("mcq-seccli-");
  authfile = join(dir, "users");
  writeFileSync(authfile, "root:rootpw\nreader:rpw:read=jobs.*\n");
});
afterAll(async () => {
  await stopAll();
  await Promise.all(extra.map((s) => s.kill("SIGKILL")));
});

describe("refused settings: one line, exit 2 for a bad flag, 1 for a file that cannot be used", () => {
  const cases: [string, string[], number, string][] = [
    ["-Z without a certificate", ["-Z"], 2, "mcq: -Z needs --tls-cert and --tls-key (or -o ssl_chain_cert=<pem>,ssl_key=<pem>)\n"],
    ["a certificate without -Z", ["--tls-cert", "c.pem"], 2, "mcq: TLS settings given without -Z (--enable-ssl), which turns TLS on\n"],
    ["an unknown -o key", ["-o", "ssl_nope=1"], 2,
      "mcq: option '-o, --extended <opts>' argument 'ssl_nope=1' is invalid. unknown -o option 'ssl_nope' (mcq knows ssl_chain_cert, ssl_key, ssl_ca_cert, ssl_verify_mode) (see mcq --help)\n"],
    ["ssl_verify_mode out of range", ["-Z", "-o", "ssl_chain_cert=c,ssl_key=k,ssl_ca_cert=a,ssl_verify_mode=7"], 2,
      "mcq: -o ssl_verify_mode=7: not 0, 1, 2 or 3\n"],
    ["verify without a CA", ["-Z", "--tls-cert", "c", "--tls-key", "k", "--tls-verify", "require"], 2,
      "mcq: --tls-verify require needs --tls-ca (the CA that signs client certificates)\n"],
    ["a bad -l", ["-l", "notls:[::1"], 2,
      "mcq: option '-l, --listen <addr>' argument 'notls:[::1' is invalid. not an address such as 127.0.0.1, 0.0.0.0:22201 or notls:127.0.0.1:22202 (see mcq --help)\n"],
  ];
  for (const [name, args, code, message] of cases) {
    test(name, async () => {
      const r = await runCommand(["-p", "0", "-H", join(dir, "never"), ...args]);
      expect({ code: r.code, stderr: r.stderr }).toEqual({ code, stderr: message });
    });
  }

  test("a missing certificate, a key of another certificate, a missing or bad authfile: exit 1 naming the file", async () => {
    const a = certs.server(4097);
    const b = certs.server(8193);
    const run = (...args: string[]) => runCommand(["-l", "127.0.0.1", "-p", "0", "-H", join(dir, "d1"), ...args]);
    let r = await run("-Z", "--tls-cert", join(dir, "none.pem"), "--tls-key", a.key);
    expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 1, stderr: `mcq: cannot read the TLS certificate ${join(dir, "none.pem")}: no such file or directory\n` });
    r = await run("-Z", "--tls-cert", a.cert, "--tls-key", b.key);
    expect(r.code).toBe(1);
    expect(r.stderr).toStartWith(`mcq: the TLS certificate ${a.cert} and key ${b.key} cannot be used: `);
    expect(r.stderr.split("\n").length).toBe(2);
    r = await run("-Y", join(dir, "nobody"));
    expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 1, stderr: `mcq: cannot read the authfile ${join(dir, "nobody")}: no such file or directory\n` });
    writeFileSync(join(dir, "bad"), "# ok\nalice:pw\nbob:pw:read=a,delete=b\n");
    r = await run("-Y", join(dir, "bad"));
    expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 1,
      stderr: `mcq: authfile ${join(dir, "bad")} line 3: rights 'delete=b' is not read=, write= or admin= followed by a glob\n` });
  });
});

test("MCQ_* variables and the config file turn TLS and -Y on", async () => {
  const { cert, key } = certs.server(4097);
  const conf = join(dir, "mcq.toml");
  writeFileSync(conf, `enable-ssl = true\ntls-key = "${key}"\nauth-file = "${authfile}"\n`);
  const s = await startServer(["--config", conf], undefined, serverCommand(), { MCQ_TLS_CERT: cert });
  const { client, serial } = await tlsClient(s.port, certs.ca);
  expect(serial).toBe("1001");
  client.write("get x\r\n");
  expect((await client.until((b) => b.includes("\r\n"))).toString()).toBe("CLIENT_ERROR unauthenticated\r\n");
  client.close();
});

test("mcq passwd prints a line the server takes; the password never appears", async () => {
  const proc = Bun.spawn([...serverCommand(), "passwd", "--rights", "read=*,write=*", "zed"], { stdin: "pipe", stdout: "pipe", stderr: "pipe" });
  proc.stdin.write("zed's pass\n");
  proc.stdin.end();
  const [line, err, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  expect({ code, err }).toEqual({ code: 0, err: "" });
  expect(line).toMatch(/^zed:\$argon2id\$[^:\s]+:read=\*,write=\*\n$/);
  expect(line).not.toContain("pass");
  const file = join(dir, "passwd-users");
  writeFileSync(file, line);
  const s = await startServer(["-Y", file]);
  const c = await s.connect();
  expect(await c.call(set("a", "zed zed's pass") + set("q", "1") + "delete q\r\n")).toBe("STORED\r\nSTORED\r\nCLIENT_ERROR permission denied\r\n");
  c.close();
}, 30_000); // argon2id at Bun's defaults (64 MB) twice, on a loaded machine

describe("the warning for a server others can reach", () => {
  const WARN = "with neither -Y nor TLS: anyone who can connect may read and delete every queue";
  test("0.0.0.0 with neither -Y nor -Z: one warning naming it", async () => {
    const s = await startListeners(["-l", "0.0.0.0"], 1);
    extra.push(s);
    const log = await logged(s, "started:");
    expect(log).toContain(`WARN listening on 0.0.0.0:${s.port} ${WARN}`);
  });
  test("with -Y, or on loopback only: none", async () => {
    const a = await startListeners(["-l", "0.0.0.0", "-Y", authfile], 1);
    const b = await startListeners(["-l", "127.0.0.1"], 1);
    extra.push(a, b);
    expect(await logged(a, "started:")).not.toContain(WARN);
    expect(await logged(b, "started:")).not.toContain(WARN);
  });
});

test("-Y applies to the unix socket too", async () => {
  const path = join(tempDir(), "mcq.sock");
  const s = await startListeners(["-s", path, "-Y", authfile], 1);
  extra.push(s);
  const c = await new Promise<Client>((ok, fail) => {
    const sock = require("node:net").connect({ path }, () => ok(Client.over(sock)));
    sock.once("error", fail);
  });
  c.write("stats\r\n");
  expect((await c.until((b) => b.includes("\r\n"))).toString()).toBe("CLIENT_ERROR unauthenticated\r\n");
  expect(await c.call(set("a", "root rootpw"))).toBe("STORED\r\n");
  c.close();
});

describe("HTTP with -Y and -Z", () => {
  let s: Multi;
  let url: string;
  beforeAll(async () => {
    const { cert, key } = certs.server(4097);
    s = await startListeners(["-l", "127.0.0.1", "-Y", authfile, "-Z", "--tls-cert", cert, "--tls-key", key, "--http", "127.0.0.1:0"], 1);
    extra.push(s);
    url = /metrics on (https:\/\/\S+)\/metrics/.exec(await logged(s, "metrics on "))![1]!;
  });
  const get = (path: string, user?: string) => fetch(url + path, {
    tls: { ca: readFileSync(certs.ca, "utf8") },
    headers: user === undefined ? {} : { authorization: `Basic ${Buffer.from(user).toString("base64")}` },
  });

  test("HTTPS with the same certificate; /healthz stays open", async () => {
    expect(url).toStartWith("https://127.0.0.1:");
    const r = await get("/healthz");
    expect({ status: r.status, body: await r.text() }).toEqual({ status: 200, body: "ok\n" });
  });

  test("/metrics and /stats.json need basic auth by a user who may read every queue", async () => {
    for (const [path, start] of [["/metrics", "# HELP "], ["/stats.json", "{"]] as const) {
      const none = await get(path);
      expect(none.status).toBe(401);
      expect(none.headers.get("www-authenticate")).toBe('Basic realm="mcq"');
      expect((await get(path, "root:wrong")).status).toBe(401);
      expect((await get(path, "reader:rpw")).status).toBe(401);
      const ok = await get(path, "root:rootpw");
      expect(ok.status).toBe(200);
      expect(await ok.text()).toStartWith(start);
    }
    await logged(s, "HTTP authentication failure from 127.0.0.1 for user root");
  });
});
