#!/usr/bin/env bun
/**
 * Entry point: command line → store → server; signals and exit codes. The only file that
 * reads process.argv or calls process.exit. `mcq check|dump|load|stats` are in tools/.
 *   0  clean stop (SIGTERM, SIGINT), --help, --version
 *   1  cannot start: data directory in use or unreadable, port in use, bad environment;
 *      or, running, the store failed for good (an fsync error: FatalStoreError)
 *   2  bad flag or value
 */
import { chmodSync, chownSync, mkdirSync, unlinkSync, writeFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import pkg from "../package.json";
import { runTool, TOOLS } from "./tools/run";
import { parseCommandLine } from "./cli";
import type { Config } from "./config";
import { daemonize } from "./daemon";
import { startHttp, type HttpServer } from "./http";
import { createLogger, type Logger } from "./log";
import { ListenError, startServer } from "./server";
import { openPostgresStore } from "./store/postgres";
import { parseStoreUrl } from "./store/postgres-hosts";
import { openSqliteStore, StoreLockedError } from "./store/sqlite";
import { withFaults } from "./store/faults";
import { StoreError, type FatalStoreError, type QueueStore } from "./store/store";
import { prepareUnixSocket } from "./unix-socket";
import { lookupUser, switchUser, type Account } from "./user";

const version: string = pkg.version;

function fail(message: string, code: number): never {
  process.stderr.write(`mcq: ${message}\n`);
  process.exit(code);
}

async function main(): Promise<void> {
  // Messages are nobody else's business: what is created from here on (the data directory, mcq.db
  // and the -wal/-shm SQLite makes by itself, the reserve) is the owner's alone. The unix socket
  // (-a) and the pid file get their modes explicitly.
  process.umask(0o077);
  const argv = process.argv.slice(2);
  if (TOOLS.includes(argv[0] ?? "")) process.exit(await runTool(argv[0]!, argv.slice(1)));
  const cli = parseCommandLine(argv, version);
  if (cli.kind === "exit") {
    if (cli.message !== undefined) (cli.code === 0 ? process.stdout : process.stderr).write(cli.message + "\n");
    process.exit(cli.code);
  }
  const { config } = cli;
  if (cli.daemon) process.exit(await daemonize(argv, config));
  const account = cli.user === null ? null : accountToBecome(cli.user);
  makeHome(config.home, account);
  if (account !== null) dropPrivileges(account);

  const log = createLogger(config.verbose, undefined, config.logFormat);
  if (cli.ignored.length > 0) log.info(`accepted for MemcacheQ compatibility, no effect here: ${cli.ignored.join(" ")}`);
  for (const note of cli.notes) log.info(note);

  const store = await openStore(config, log);
  if (config.unixSocket !== null) {
    await prepareUnixSocket(config.unixSocket).catch((e: Error) => {
      store.close();
      fail(e.message, 1);
    });
  }
  let server;
  try {
    server = startServer(config, { store, log, version });
  } catch (e) {
    store.close();
    if (e instanceof ListenError) fail(e.message, 1);
    throw e;
  }
  let http: HttpServer | null = null;
  if (config.http !== null) {
    try {
      http = startHttp(server.context, config.http);
    } catch (e) {
      fail(`cannot serve --http on ${config.http.hostname}:${config.http.port}: ${(e as Error).message}`, 1);
    }
    log.info(`metrics on ${http.url}/metrics`);
  }
  if (config.pidFile !== null) {
    try {
      writeFileSync(config.pidFile, `${process.pid}\n`);
      chmodSync(config.pidFile, 0o644); // public information, past the umask
    } catch (e) {
      await server.stop();
      fail(`cannot write the pid file ${config.pidFile}: ${(e as Error).message}`, 1);
    }
  }
  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info(`${signal}: stopping`);
    try {
      http?.stop();
      await server.stop();
    } catch (e) {
      log.error(`stop: ${(e as Error).message}`);
      process.exit(1);
    }
    if (config.pidFile !== null) {
      try {
        unlinkSync(config.pidFile);
      } catch {
        // Already gone.
      }
    }
    process.exit(0);
  };
  // Before the listening line: whoever reads it may signal at once, and must get a clean stop.
  process.on("SIGTERM", () => void stop("SIGTERM"));
  process.on("SIGINT", () => void stop("SIGINT"));
  const where = config.store === null ? `data in ${config.home}, sync ${config.sync}` : `queues in Postgres ${parseStoreUrl(config.store).safe}`;
  log.info(`${where}, max body ${config.maxBody} bytes`);
  process.stdout.write(`mcq ${version} listening on ${server.address}\n`);
}

/** Milliseconds a Postgres batch may take before it fails with SERVER_ERROR (never a hang). */
const POSTGRES_TIMEOUT_MS = 5000;

/** The store (Postgres with --store, else SQLite in the data directory), or exit 1 saying why not. */
async function openStore(config: Config, log: Logger): Promise<QueueStore> {
  try {
    const store =
      config.store === null
        ? openSqliteStore(config.home, { sync: config.sync, cacheMb: config.cacheMb, onFatal: (e) => stopOnFatal(e, log) })
        : await openPostgresStore(config.store, {
            leaseS: config.nodeTimeoutS,
            timeoutMs: POSTGRES_TIMEOUT_MS,
            log: (level, message) => log[level](message),
            home: config.home,
          });
    const faults = process.env.MCQ_FAULTS;
    if (!faults) return store;
    log.warn(`MCQ_FAULTS=${faults}: store failures are injected (a test seam; never in production)`);
    return withFaults(store, faults);
  } catch (e) {
    if (e instanceof StoreLockedError) fail(`${e.message}; is another server running on -H ${config.home}?`, 1);
    if (e instanceof StoreError) fail(e.message, 1);
    if (config.store !== null) fail(`cannot open the Postgres store ${parseStoreUrl(config.store).safe}: ${(e as Error).message}`, 1);
    throw e;
  }
}

/**
 * The store failed for good (an fsync failed; see FatalStoreError). By the end of this turn the
 * batch it failed in is answered SERVER_ERROR, and the store refuses any later work, so no more
 * STORED can leave. Exit 1 after this turn's replies are written, without closing the store:
 * the files stay as a crash leaves them, and the next start recovers what really is on disk.
 */
function stopOnFatal(error: FatalStoreError, log: Logger): void {
  log.error(`${error.message}: what is on disk may not be what was acknowledged; stopping (exit 1)`);
  setImmediate(() => process.exit(1));
}

/** -u: only root can switch users; anyone else keeps running as themselves, as MemcacheQ (null). */
function accountToBecome(user: string): Account | null {
  if (process.getuid?.() !== 0) return null;
  if (typeof process.setgroups !== "function" || typeof process.setgid !== "function" || typeof process.setuid !== "function") {
    fail(`-u ${user}: switching users is not supported on this platform; start mcq as ${user} instead`, 1);
  }
  return lookupUser(user) ?? fail(`no such user '${user}'`, 1);
}

/**
 * Creates the data directory if missing. Under -u it is made as root, before the switch, and
 * the directories made here are given to the user, who could not have made them (e.g. in
 * /var/lib); a directory that already exists keeps its owner.
 */
function makeHome(home: string, owner: Account | null): void {
  try {
    const first = mkdirSync(home, { recursive: true, mode: 0o700 });
    if (owner === null || first === undefined) return;
    const top = resolve(first);
    for (let dir = resolve(home); ; dir = dirname(dir)) {
      chownSync(dir, owner.uid, owner.gid);
      if (dir === top || dir === dirname(dir)) break;
    }
  } catch (e) {
    fail(`cannot create the data directory ${home}: ${(e as Error).message}`, 1);
  }
}

function dropPrivileges(account: Account): void {
  try {
    switchUser(account);
  } catch (e) {
    fail(`can't switch to user ${account.name}: ${(e as Error).message}`, 1);
  }
}

await main();
