/**
 * The package's entry (`import { startServer } from "mcq"`): a real mcq server in the caller's
 * process, for other people's tests. It is the binary's server (server.ts, the same store
 * code); only what main.ts does for a process is left out: no signal handlers, no
 * process.exit, no umask, no pid file, no environment or TOML settings.
 */
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pkg from "../package.json";
import { DEFAULTS, type Config } from "./config";
import { checkSettings } from "./fixture-settings";
import { startHttp, type HttpServer } from "./http";
import { createLogger, type Logger } from "./log";
import { startServer as startCore, type Server } from "./server";
import { createMemoryStore } from "./store/memory";
import { openPostgresStore } from "./store/postgres";
import { parseStoreUrl } from "./store/postgres-hosts";
import { openSqliteStore } from "./store/sqlite";
import type { QueueStore } from "./store/store";
import { prepareUnixSocket } from "./unix-socket";

/**
 * Where the messages live:
 * - `"memory"`: in this process only, gone at stop(); the fastest.
 * - `{ dir }`: SQLite in that directory (created if missing, kept at stop()), as `mcq -H dir`;
 *   `{}` makes a temporary directory that stop() removes.
 * - `{ postgres: url }`: a PostgreSQL database, as the binary's `--store`.
 */
export type StoreChoice = "memory" | { dir?: string } | { postgres: string };

/**
 * Server settings, named as in the server's config table (src/config.ts) and with its defaults:
 * `maxBody`, `sync`, `expiry`, `openTimeoutMs`, `maxOpen`, `idleTimeoutS`, `http`… The data
 * directory comes from `store`, and the pid file belongs to the binary.
 */
/** Milliseconds a Postgres batch may take before it fails with SERVER_ERROR, as in the binary. */
const POSTGRES_TIMEOUT_MS = 5000;

export type Settings = Partial<Omit<Config, "home" | "pidFile" | "store">>;

/** What startServer() takes: the store (default `{}`, a temporary SQLite directory) and any settings. */
export interface StartOptions extends Settings {
  store?: StoreChoice;
}

/** A running mcq server. */
export interface Mcq {
  /** The TCP port it listens on (the free one picked for `port: 0`, the default); 0 on a unix socket. */
  readonly port: number;
  /** `host:port` (e.g. `127.0.0.1:40123`), or the unix socket's path: what a memcache client is given. */
  readonly address: string;
  /** The data directory of a SQLite store, null for the others. */
  readonly dir: string | null;
  /** With the `http` setting: the base URL of /metrics, /stats.json and /healthz; otherwise null. */
  readonly httpUrl: string | null;
  /**
   * Stops as the binary does on SIGTERM: answers what it has read, returns open messages to their
   * queues, closes the store; then removes a temporary directory it made. Calling it again
   * returns the same promise.
   */
  stop(): Promise<void>;
}

/**
 * Starts an mcq server in this process on port 0 (a free port) of 127.0.0.1, and resolves once it
 * is listening. Each call is a separate server with its own store: two never share state.
 * Throws on an unknown setting or a bad value, or when the server cannot start (the port or the
 * data directory is in use); nothing is left behind then.
 *
 * ```ts
 * const mq = await startServer({ store: "memory" });
 * const client = new Memcached(mq.address);
 * // …
 * await mq.stop();
 * ```
 */
export async function startServer(options: StartOptions = {}): Promise<Mcq> {
  const { store: choice = {}, ...settings } = options;
  checkSettings(settings);
  const config: Config = { ...DEFAULTS, port: 0, ...settings };
  const log = createLogger(config.verbose, undefined, config.logFormat);
  const made = tempDirOf(choice);
  const dir = made ?? (typeof choice === "object" && "dir" in choice ? choice.dir ?? null : null);
  let store: QueueStore | null = null;
  let server: Server | null = null;
  try {
    store = await openStore(choice, dir, config, log);
    // The server keeps files of its own beside the store's (backup.sock): in its directory, not ./data.
    if (dir !== null) config.home = dir;
    if (config.unixSocket !== null) await prepareUnixSocket(config.unixSocket);
    server = startCore(config, { store, log, version: pkg.version });
    const http = config.http === null ? null : startHttp(server.context, config.http);
    return running(server, http, dir, made);
  } catch (e) {
    // Nothing is left behind: the server closes its store, and a directory made here goes.
    if (server !== null) await server.stop();
    else store?.close();
    if (made !== null) rmSync(made, { recursive: true, force: true });
    throw e;
  }
}

/** A temporary data directory for `{}` (or `{ dir: undefined }`), else null. */
function tempDirOf(choice: StoreChoice): string | null {
  if (choice === "memory" || typeof choice !== "object" || choice === null) return null;
  if ("postgres" in choice || choice.dir !== undefined) return null;
  return mkdtempSync(join(tmpdir(), "mcq-fixture-"));
}

async function openStore(choice: StoreChoice, dir: string | null, config: Config, log: Logger): Promise<QueueStore> {
  if (choice === "memory") return createMemoryStore();
  if (typeof choice !== "object" || choice === null) {
    throw new TypeError(`mcq startServer: store must be "memory", { dir?: string } or { postgres: url }, not ${JSON.stringify(choice)}`);
  }
  if ("postgres" in choice) {
    try {
      parseStoreUrl(String(choice.postgres));
    } catch (e) {
      throw new TypeError(`mcq startServer: store.postgres must be a postgres:// URL, not ${JSON.stringify(choice.postgres)} (${(e as Error).message})`);
    }
    // The binary's own --store code: nodes on one Postgres share its queues (no data directory).
    return openPostgresStore(choice.postgres, {
      leaseS: config.nodeTimeoutS,
      reindexS: config.pgReindexS,
      timeoutMs: POSTGRES_TIMEOUT_MS,
      log: (level, message) => log[level](message),
      home: null,
    });
  }
  if (typeof dir !== "string" || dir === "") throw new TypeError(`mcq startServer: store.dir must be a directory path, not ${JSON.stringify(dir)}`);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  // The binary exits on a fatal store error; a fixture cannot end its caller's process, so the
  // store refuses all later work (SERVER_ERROR) and the error is logged.
  const onFatal = (e: Error) => log.error(`${e.message}: this server's store refuses all work from now on`);
  return openSqliteStore(dir, { sync: config.sync, cacheMb: config.cacheMb, onFatal });
}

function running(server: Server, http: HttpServer | null, dir: string | null, made: string | null): Mcq {
  let stopped: Promise<void> | null = null;
  const stop = (): Promise<void> => (stopped ??= (async () => {
    try {
      http?.stop();
      await server.stop();
    } finally {
      if (made !== null) rmSync(made, { recursive: true, force: true });
    }
  })());
  return {
    port: server.port,
    address: server.address,
    dir,
    httpUrl: http?.url ?? null,
    stop,
  };
}
