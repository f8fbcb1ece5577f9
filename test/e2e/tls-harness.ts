/**
 * For the TLS and auth tests: certificates made now by Debian's openssl (a CA, server
 * certificates with chosen serial numbers, a client certificate), a server with several
 * listeners (one listening line each), and TLS clients over node:tls.
 */
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { connect as tlsConnect, type TLSSocket } from "node:tls";
import { Client, readLine, serverCommand, tempDir, type Running } from "./harness";

export interface Certs {
  dir: string;
  ca: string;
  /** A server certificate (for localhost and 127.0.0.1) and its key, by serial number. */
  server(serial: number): { cert: string; key: string };
  client: { cert: string; key: string };
}

function openssl(dir: string, ...args: string[]): void {
  const r = Bun.spawnSync(["openssl", ...args], { cwd: dir, stderr: "pipe" });
  if (r.exitCode !== 0) throw new Error(`openssl ${args.join(" ")}: ${r.stderr.toString()}`);
}

/** Signs a new EC key's certificate with the CA: name.pem and name.key in dir. */
function issue(dir: string, name: string, subject: string, serial: number, ext: string): { cert: string; key: string } {
  openssl(dir, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
    "-keyout", `${name}.key`, "-out", `${name}.csr`, "-subj", subject);
  writeFileSync(join(dir, `${name}.ext`), ext);
  openssl(dir, "x509", "-req", "-in", `${name}.csr`, "-CA", "ca.pem", "-CAkey", "ca.key", "-set_serial", String(serial),
    "-days", "2", "-out", `${name}.pem`, "-extfile", `${name}.ext`);
  return { cert: join(dir, `${name}.pem`), key: join(dir, `${name}.key`) };
}

export function makeCerts(): Certs {
  const dir = tempDir("mcq-certs-");
  openssl(dir, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
    "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=mcq test CA");
  const made = new Map<number, { cert: string; key: string }>();
  return {
    dir,
    ca: join(dir, "ca.pem"),
    server(serial) {
      if (!made.has(serial)) {
        made.set(serial, issue(dir, `server-${serial}`, "/CN=localhost", serial, "subjectAltName=DNS:localhost,IP:127.0.0.1\n"));
      }
      return made.get(serial)!;
    },
    client: issue(dir, "client", "/CN=mcq test client", 77, "extendedKeyUsage=clientAuth\n"),
  };
}

export interface Multi extends Running {
  /** Every listening line's port, in order. */
  ports: number[];
}

/** Starts the server and waits for `count` listening lines (no -l added: give them in args). */
export async function startListeners(args: string[], count: number): Promise<Multi> {
  const home = join(tempDir(), "data");
  const proc = Bun.spawn([...serverCommand(), "-p", "0", "-H", home, ...args], { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  let err = "";
  void (async () => {
    for await (const chunk of proc.stderr) err += new TextDecoder().decode(chunk);
  })();
  const ports: number[] = [];
  let rest = "";
  const reader = proc.stdout.getReader();
  while (ports.length < count) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`server did not start (exit ${await proc.exited}): ${err}`);
    rest += new TextDecoder().decode(value);
    const lines = rest.split("\n");
    rest = lines.pop()!;
    // A unix socket's line names a path: port 0.
    for (const l of lines) if (l.includes(" listening on ")) ports.push(Number(/:(\d+)$/.exec(l)?.[1] ?? 0));
  }
  reader.releaseLock();
  return {
    proc, port: ports[0]!, ports, home, args,
    stderr: () => err,
    connect: () => Client.connect(ports[0]!),
    async kill(signal = "SIGTERM") {
      proc.kill(signal);
      return proc.exited;
    },
  };
}

/** Waits until the server's stderr holds `text`. */
export async function logged(server: Running, text: string, timeoutMs = 10_000): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  while (!server.stderr().includes(text)) {
    if (Date.now() > deadline) throw new Error(`not logged: ${text}; stderr: ${server.stderr()}`);
    await Bun.sleep(10); // polls a log, not a reply: there is nothing to await
  }
  return server.stderr();
}

export interface TlsClient {
  client: Client;
  socket: TLSSocket;
  serial: string;
}

/** A TLS connection trusting the test CA; rejects if the handshake fails. */
export function tlsClient(port: number, ca: string, cert?: { cert: string; key: string }): Promise<TlsClient> {
  return new Promise((ok, fail) => {
    const socket = tlsConnect({
      host: "127.0.0.1", port, servername: "localhost", ca: readFileSync(ca),
      ...(cert === undefined ? {} : { cert: readFileSync(cert.cert), key: readFileSync(cert.key) }),
    }, () => ok({ client: Client.over(socket), socket, serial: socket.getPeerCertificate().serialNumber }));
    socket.once("error", fail);
    socket.once("close", () => fail(new Error("closed during the handshake")));
  });
}
