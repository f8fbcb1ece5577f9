/**
 * TLS (tracker 11): certificates made by openssl at test time; node:tls, openssl s_client and
 * pymemcache as clients; a plain listener beside the TLS one; mutual TLS; certificate reload by
 * refresh_certs and SIGHUP with the serial number each new client sees.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { copyFileSync, readFileSync, writeFileSync } from "node:fs";
import { Client, set, value } from "./harness";
import { logged, makeCerts, startListeners, tlsClient, type Certs, type Multi } from "./tls-harness";

const PYTHON = "/usr/bin/python3";
const hasPymemcache = Bun.spawnSync([PYTHON, "-c", "import pymemcache"]).exitCode === 0;

let certs: Certs;
const servers: Multi[] = [];
beforeAll(() => {
  certs = makeCerts();
});
afterAll(async () => {
  await Promise.all(servers.map((s) => s.kill("SIGKILL")));
});

async function start(args: string[], count = 1): Promise<Multi> {
  const s = await startListeners(args, count);
  servers.push(s);
  return s;
}

/** -Z with a copy of serial 4097's files at fixed paths (so reload tests can replace them). */
function tlsArgs(name: string): string[] {
  const { cert, key } = certs.server(4097);
  const at = `${certs.dir}/${name}`;
  copyFileSync(cert, `${at}.pem`);
  copyFileSync(key, `${at}.key`);
  return ["-Z", "--tls-cert", `${at}.pem`, "--tls-key", `${at}.key`];
}

describe("a TLS listener and a plain one", () => {
  let server: Multi;
  beforeAll(async () => {
    server = await start(["-l", "127.0.0.1", "-l", "notls:127.0.0.1:0", ...tlsArgs("two")], 2);
  });

  test("set and get over TLS, exact bytes; the certificate is the one given", async () => {
    const { client, serial } = await tlsClient(server.ports[0]!, certs.ca);
    expect(serial).toBe("1001"); // 4097
    expect(await client.call(set("tq", "secret body"))).toBe("STORED\r\n");
    expect(await client.call("get tq/peek\r\nget tq\r\nget tq\r\n")).toBe(value("tq/peek", "secret body") + "END\r\n" +
      value("tq", "secret body") + "END\r\nEND\r\n");
    client.close();
  });

  test("the notls: listener is plain and serves the same queues", async () => {
    const tls = await tlsClient(server.ports[0]!, certs.ca);
    await tls.client.call(set("shared", "x"));
    const plain = await Client.connect(server.ports[1]!);
    expect(await plain.call("get shared\r\n")).toBe(value("shared", "x") + "END\r\n");
    plain.close();
    tls.client.close();
  });

  test("plain TCP to the TLS port gets no reply: no plain fallback", async () => {
    const c = await Client.connect(server.ports[0]!);
    c.write("version\r\n");
    const got = await c.closedBy();
    expect(got).not.toContain("VERSION");
    expect(c.closed).toBe(true);
  });

  test("openssl s_client completes the handshake, TLS 1.2 or later, and reads VERSION", async () => {
    const p = Bun.spawn(["openssl", "s_client", "-connect", `127.0.0.1:${server.ports[0]}`, "-CAfile", certs.ca,
      "-servername", "localhost", "-verify_return_error", "-brief"], { stdin: "pipe", stdout: "pipe", stderr: "pipe" });
    p.stdin.write("version\r\n");
    p.stdin.flush();
    const reader = p.stdout.getReader();
    let out = "";
    while (!out.includes("\r\n")) {
      const { value: chunk, done } = await reader.read();
      if (done) break;
      out += new TextDecoder().decode(chunk);
    }
    p.kill();
    const err = await new Response(p.stderr).text();
    expect(out).toMatch(/^VERSION \d+\.\d+\.\d+\r\n$/);
    expect(err).toContain("Verification: OK");
    expect(err).toMatch(/Protocol version: TLSv1\.[23]/);
  });

  test("TLS 1.1 is refused", async () => {
    const r = Bun.spawnSync(["openssl", "s_client", "-connect", `127.0.0.1:${server.ports[0]}`, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"],
      { stdin: new TextEncoder().encode("version\r\n"), stderr: "pipe" });
    expect(r.exitCode).not.toBe(0);
    expect(r.stdout.toString()).not.toContain("VERSION");
  });

  test.skipIf(!hasPymemcache && !process.env.CI)("pymemcache with tls_context: set, get, get with options", () => {
    const script = `
import ssl
from pymemcache.client.base import Client
ctx = ssl.create_default_context(cafile=${JSON.stringify(certs.ca)})
c = Client(("127.0.0.1", ${server.ports[0]}), tls_context=ctx)
assert c.set("pytls", b"one", noreply=False)
assert c.set("pytls", b"two", noreply=False)
print(c.get("pytls/peek"), c.get("pytls/open"), c.get("pytls/close"), c.get("pytls"), c.get("pytls/t=20"))
`;
    const r = Bun.spawnSync([PYTHON, "-c", script]);
    expect(r.stderr.toString()).toBe("");
    expect(r.stdout.toString()).toBe("b'one' b'one' None b'two' None\n");
  });
});

describe("mutual TLS", () => {
  test("--tls-verify require: without a client certificate the handshake fails, with one it works", async () => {
    const server = await start(["-l", "127.0.0.1", ...tlsArgs("mutual"), "--tls-ca", certs.ca, "--tls-verify", "require"]);
    let refused: unknown = null;
    try {
      const { client } = await tlsClient(server.port, certs.ca);
      // TLS 1.3: the server's verdict may arrive after the client's handshake: the first reply fails then.
      client.write("version\r\n");
      const got = await client.closedBy();
      if (!got.includes("VERSION")) refused = new Error("closed");
    } catch (e) {
      refused = e;
    }
    expect(refused).not.toBeNull();
    const { client } = await tlsClient(server.port, certs.ca, certs.client);
    expect(await client.call("")).toBe("");
    client.close();
  });

  test("the memcached spelling: -o ssl_chain_cert=,ssl_key=,ssl_ca_cert=,ssl_verify_mode=2", async () => {
    const { cert, key } = certs.server(4097);
    const server = await start(["-l", "127.0.0.1", "-Z", "-o", `ssl_chain_cert=${cert},ssl_key=${key},ssl_ca_cert=${certs.ca},ssl_verify_mode=2`]);
    const { client } = await tlsClient(server.port, certs.ca, certs.client);
    expect(await client.call(set("m", "1"))).toBe("STORED\r\n");
    client.close();
  });
});

describe("certificate reload", () => {
  test("refresh_certs and SIGHUP: open clients go on, new ones see the new serial, a bad file keeps the old", async () => {
    const args = tlsArgs("reload");
    const server = await start(["-l", "127.0.0.1", ...args]);
    const [certPath, keyPath] = [args[2]!, args[4]!];
    const first = await tlsClient(server.port, certs.ca);
    expect(first.serial).toBe("1001");

    const next = certs.server(8193);
    copyFileSync(next.cert, certPath);
    copyFileSync(next.key, keyPath);
    expect(await first.client.call("refresh_certs\r\n")).toBe("OK\r\n");
    expect(await first.client.call(set("r", "still here"))).toBe("STORED\r\n");
    const second = await tlsClient(server.port, certs.ca);
    expect(second.serial).toBe("2001"); // 8193

    const third = certs.server(12289);
    copyFileSync(third.cert, certPath);
    copyFileSync(third.key, keyPath);
    server.proc.kill("SIGHUP");
    await logged(server, "SIGHUP: reloaded the TLS certificate");
    expect((await tlsClient(server.port, certs.ca)).serial).toBe("3001"); // 12289
    expect(await first.client.call("get r\r\n")).toBe(value("r", "still here") + "END\r\n");
    expect(await second.client.call("")).toBe("");

    writeFileSync(certPath, "not a certificate\n");
    const reply = await first.client.call("refresh_certs\r\n");
    expect(reply).toBe(`SERVER_ERROR cannot reload the TLS certificate: the TLS certificate ${certPath} is not PEM (no -----BEGIN line)\r\n`);
    server.proc.kill("SIGHUP");
    const log = await logged(server, "SIGHUP: cannot reload the TLS certificate");
    expect(log).toContain("keeping the old one");
    expect((await tlsClient(server.port, certs.ca)).serial).toBe("3001");
    expect(await first.client.call("")).toBe("");
  });

  test("HTTPS (--http) follows refresh_certs and SIGHUP; a request begun before the move completes", async () => {
    const args = tlsArgs("https");
    const server = await start(["-l", "127.0.0.1", ...args, "--http", "127.0.0.1:0"]);
    const [certPath, keyPath] = [args[2]!, args[4]!];
    const httpPort = Number(/metrics on https:\/\/127\.0\.0\.1:(\d+)\/metrics/.exec(await logged(server, "metrics on "))![1]);
    const before = await tlsClient(httpPort, certs.ca);
    expect(before.serial).toBe("1001");
    // Half a request: its connection was accepted by the server that is about to be replaced.
    before.client.write("GET /healthz HTTP/1.1\r\nHost: localhost\r\n");

    const next = certs.server(8193);
    copyFileSync(next.cert, certPath);
    copyFileSync(next.key, keyPath);
    const admin = await tlsClient(server.port, certs.ca);
    expect(await admin.client.call("refresh_certs\r\n")).toBe("OK\r\n");
    expect((await tlsClient(httpPort, certs.ca)).serial).toBe("2001");
    before.client.write("\r\n");
    const reply = (await before.client.until((b) => b.includes("ok\n"))).toString();
    expect(reply).toStartWith("HTTP/1.1 200 OK\r\n");

    const third = certs.server(12289);
    copyFileSync(third.cert, certPath);
    copyFileSync(third.key, keyPath);
    server.proc.kill("SIGHUP");
    await logged(server, "SIGHUP: reloaded the TLS certificate");
    expect((await tlsClient(httpPort, certs.ca)).serial).toBe("3001");
    const r = await fetch(`https://localhost:${httpPort}/healthz`, { tls: { ca: readFileSync(certs.ca, "utf8") } });
    expect({ status: r.status, body: await r.text() }).toEqual({ status: 200, body: "ok\n" });
    expect(server.stderr()).not.toContain("HTTPS keeps the old");
    admin.client.close();
  });

  test("refresh_certs without -Z says so", async () => {
    const server = await start(["-l", "127.0.0.1"]);
    const c = await Client.connect(server.port);
    expect(await c.call("refresh_certs\r\n")).toBe("CLIENT_ERROR TLS is not on (-Z)\r\n");
    c.close();
  });
});
