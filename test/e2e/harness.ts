/**
 * End-to-end harness: spawns the real server (source, or the binary named by MCQ_BIN) on
 * port 0 with a temp data directory, waits for its listening line, and talks raw TCP.
 * Nothing here sleeps to guess: it waits for a line, a reply or a process exit.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { connect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import type { Subprocess } from "bun";

const ROOT = resolve(import.meta.dir, "../..");

/** The server command: MCQ_BIN (e.g. dist/mcq) or bun + src/main.ts. */
export function serverCommand(): string[] {
  const bin = process.env.MCQ_BIN;
  return bin ? [resolve(ROOT, bin)] : [process.execPath, join(ROOT, "src/main.ts")];
}

/** Every directory tempDir made; test/setup.ts removes them after the run, so runs leave nothing in /tmp. */
const madeDirs: string[] = [];

/** The tempDirs that tmpfsDir mounted a tmpfs on. */
const mounted: string[] = [];

/** Removes every directory tempDir made (bun test runs no process "exit" handlers, so a preload's afterAll calls this). */
export function removeTempDirs(): void {
  // Lazily: a server killed a moment ago may still hold files there.
  for (const dir of mounted.splice(0)) Bun.spawnSync(["umount", "-l", dir]);
  for (const dir of madeDirs.splice(0)) rmSync(dir, { recursive: true, force: true });
}

export function tempDir(prefix = "mcq-test-"): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  madeDirs.push(dir);
  return dir;
}

/** A tempDir with a fresh tmpfs of `mb` MB mounted on it, or null where mounting is not allowed (needs root). */
export function tmpfsDir(prefix: string, mb: number): string | null {
  const dir = tempDir(prefix);
  if (Bun.spawnSync(["mount", "-t", "tmpfs", "-o", `size=${mb}m`, "tmpfs", dir]).exitCode !== 0) return null;
  mounted.push(dir);
  return dir;
}

/** Unmounts (if tmpfsDir mounted it) and removes one directory now, rather than after the run. */
export function removeDir(dir: string): void {
  if (mounted.includes(dir)) {
    mounted.splice(mounted.indexOf(dir), 1);
    Bun.spawnSync(["umount", "-l", dir]);
  }
  if (madeDirs.includes(dir)) madeDirs.splice(madeDirs.indexOf(dir), 1);
  rmSync(dir, { recursive: true, force: true });
}

/**
 * At exit, and on SIGINT or SIGTERM (then exit 130 or 143), the servers still running are killed
 * and every tempDir goes, its tmpfs unmounted: an interrupted run leaves nothing in /tmp.
 */
export function cleanUpOnExit(): void {
  const cleanUp = () => {
    for (const server of running) server.proc.kill("SIGKILL");
    removeTempDirs();
  };
  process.on("exit", cleanUp);
  for (const [signal, code] of [["SIGINT", 130], ["SIGTERM", 143]] as const) {
    process.on(signal, () => {
      cleanUp();
      process.exit(code);
    });
  }
}

export interface Running {
  proc: Subprocess<"ignore", "pipe", "pipe">;
  port: number;
  home: string;
  args: string[];
  /** Everything the server wrote to stderr so far. */
  stderr(): string;
  connect(): Promise<Client>;
  /** Sends a signal and waits for the exit code. */
  kill(signal?: NodeJS.Signals): Promise<number>;
}

const running = new Set<Running>();

/** Starts a server on a fresh (or the given) data directory and waits for "listening on". */
export async function startServer(
  extra: string[] = [],
  home = join(tempDir(), "data"),
  command = serverCommand(),
  env: Record<string, string> = {},
): Promise<Running> {
  const args = ["-l", "127.0.0.1", "-p", "0", "-H", home, ...extra];
  const proc = Bun.spawn([...command, ...args], { stdin: "ignore", stdout: "pipe", stderr: "pipe", env: { ...process.env, ...env } });
  let err = "";
  void (async () => {
    for await (const chunk of proc.stderr) err += new TextDecoder().decode(chunk);
  })();
  const line = await readLine(proc.stdout, (l) => l.includes(" listening on "));
  if (line === null) {
    const code = await proc.exited;
    throw new Error(`server did not start (exit ${code}): ${err}`);
  }
  const port = Number(/:(\d+)$/.exec(line.trim())![1]);
  const server: Running = {
    proc,
    port,
    home,
    args,
    stderr: () => err,
    connect: () => Client.connect(port),
    async kill(signal = "SIGTERM") {
      proc.kill(signal);
      const code = await proc.exited;
      running.delete(server);
      return code;
    },
  };
  running.add(server);
  return server;
}

/** Kills every server a test left running (for afterAll). */
export async function stopAll(): Promise<void> {
  await Promise.all([...running].map((s) => s.kill("SIGKILL")));
}

/** Reads lines from a stream until one matches; null if the stream ends first. */
export async function readLine(stream: ReadableStream<Uint8Array>, match: (line: string) => boolean): Promise<string | null> {
  const reader = stream.getReader();
  let text = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return null;
      text += new TextDecoder().decode(value);
      const lines = text.split("\n");
      text = lines.pop()!;
      const found = lines.find(match);
      if (found !== undefined) return found;
    }
  } finally {
    reader.releaseLock();
  }
}

/** Runs the server command to its end (for flags that exit at once). */
export async function runCommand(args: string[], timeoutMs = 20_000, command = serverCommand()) {
  const proc = Bun.spawn([...command, ...args], { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  const timer = setTimeout(() => proc.kill("SIGKILL"), timeoutMs);
  const [stdout, stderr, code] = await Promise.all([
    new Response(proc.stdout).text(),
    new Response(proc.stderr).text(),
    proc.exited,
  ]);
  clearTimeout(timer);
  return { stdout, stderr, code };
}

export function cleanup(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
}

/** A raw TCP client that collects every byte the server sends. */
export class Client {
  private buf: Buffer = Buffer.alloc(0);
  private waiter: (() => void) | null = null;
  closed = false;

  private constructor(readonly socket: Socket) {
    socket.on("data", (chunk: Buffer) => {
      this.buf = Buffer.concat([this.buf, chunk]);
      this.waiter?.();
    });
    socket.on("close", () => {
      this.closed = true;
      this.waiter?.();
    });
    socket.on("error", () => {});
  }

  /** A client over a socket made elsewhere (a TLS one: tls-harness.ts). */
  static over(socket: Socket): Client {
    return new Client(socket);
  }

  static connect(port: number, host = "127.0.0.1"): Promise<Client> {
    return new Promise((ok, fail) => {
      const socket = connect({ port, host, noDelay: true }, () => ok(new Client(socket)));
      socket.once("error", fail);
    });
  }

  write(data: string | Uint8Array): void {
    this.socket.write(typeof data === "string" ? Buffer.from(data, "latin1") : data);
  }

  /** Waits until the received bytes satisfy `done` (or the connection closes); returns and clears them. */
  async until(done: (b: Buffer) => boolean, timeoutMs = 10_000): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (!done(this.buf) && !this.closed) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out; got ${JSON.stringify(this.buf.toString("latin1"))}`);
      await new Promise<void>((ok) => {
        const t = setTimeout(ok, left);
        this.waiter = () => {
          clearTimeout(t);
          ok();
        };
      });
      this.waiter = null;
    }
    const out = this.buf;
    this.buf = Buffer.alloc(0);
    return out;
  }

  /** Reads exactly n bytes. */
  async read(n: number, timeoutMs?: number): Promise<Buffer> {
    const got = await this.until((b) => b.length >= n, timeoutMs);
    this.buf = got.subarray(n);
    return got.subarray(0, n);
  }

  /**
   * Sends `data` then `version`, and returns everything before the VERSION line: the exact
   * reply to `data`, however many lines (an empty string means no reply at all).
   */
  async call(data: string | Uint8Array, timeoutMs?: number): Promise<string> {
    this.write(data);
    this.write("version\r\n");
    const text0 = typeof data === "string" ? data : Buffer.from(data).toString("latin1");
    const markers = text0.split("version\r\n").length;
    const got = await this.until((b) => {
      const t = b.toString("latin1");
      return /VERSION \d+\.\d+\.\d+\r\n$/.test(t) && t.split("VERSION ").length - 1 >= markers;
    }, timeoutMs);
    const text = got.toString("latin1");
    return text.slice(0, text.lastIndexOf("VERSION "));
  }

  /** Resolves when the server closes the connection; returns what it sent before. */
  async closedBy(timeoutMs?: number): Promise<string> {
    return (await this.until(() => false || this.closed, timeoutMs)).toString("latin1");
  }

  close(): void {
    this.socket.destroy();
  }
}

export const set = (q: string, body: string, flags = 0) => `set ${q} ${flags} 0 ${Buffer.byteLength(body, "latin1")}\r\n${body}\r\n`;
export const value = (q: string, body: string, flags = 0) => `VALUE ${q} ${flags} ${Buffer.byteLength(body, "latin1")}\r\n${body}\r\n`;

/** The base URL of --http, from the server's "metrics on …" log line. */
export async function metricsUrl(stderr: () => string): Promise<string> {
  for (let i = 0; i < 200; i++) {
    const m = /metrics on (http:\/\/\S+)\/metrics/.exec(stderr());
    if (m) return m[1]!;
    await Bun.sleep(10);
  }
  throw new Error(`no metrics line in: ${stderr()}`);
}

/** `stats queue <q>` as numbers by field. */
export async function queueStats(c: Client, q: string): Promise<Record<string, number>> {
  const reply = await c.call(`stats queue ${q}\r\n`);
  return Object.fromEntries([...reply.matchAll(/STAT (\S+) (\d+)\r\n/g)].map((m) => [m[1]!, Number(m[2])]));
}

/** Waits until the server counts `n` client connections (--http's /stats.json: answered while a batch is in flight). */
export async function connectionsAre(server: Running, n: number): Promise<void> {
  const url = `${await metricsUrl(server.stderr)}/stats.json`;
  for (const deadline = Date.now() + 10_000; Date.now() < deadline; ) {
    const stats = (await (await fetch(url)).json()) as { connections: number };
    if (stats.connections === n) return;
  }
  throw new Error(`never ${n} connections`);
}

/** Waits until the server has counted `n` store failures (each check is a stats reply, awaited). */
export async function storeErrorsAre(c: Client, n: number): Promise<void> {
  while (!(await c.call("stats\r\n")).includes(`STAT store_errors ${n}\r\n`));
}
