#!/usr/bin/env bun
/**
 * Entry point: command line → store → server; signals and exit codes. The only file that
 * reads process.argv or calls process.exit. `mcq backup|check|dump|load|stats` are in tools/.
 *   0  clean stop (SIGTERM, SIGINT), --help, --version
 *   1  cannot start: data directory in use or unreadable, port in use, bad environment;
 *      or, running, the store failed for good (an fsync error: FatalStoreError); or a stop
 *      that could not close the store cleanly (a Postgres node that could not leave)
 *   2  bad flag or value
 */
import { accessSync, chmodSync, chownSync, constants, existsSync, mkdirSync, statSync, unlinkSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import pkg from "../package.json";
import { runTool, TOOLS } from "./tools/run";
import { parseCommandLine, versionLine } from "./cli";
import type { Config } from "./config";
import type { Context } from "./context";
import { daemonize, isDaemonChild } from "./daemon";
import { reason } from "./errors";
import { startHttp, type HttpServer } from "./http";
import { createLogger, formatLine, openLogFile, type LogFile, type Logger } from "./log";
import { handleSignals, onReload } from "./signals";
import { suggest } from "./suggest";
import { AuthFileError } from "./auth";
import { ListenError, startServer, type Server } from "./server";
import { TlsError, type LoadedTls } from "./tls";
import { openPostgresStore } from "./store/postgres";
import type { DeadLetterPolicy } from "./store/postgres-features";
import { createQueueLimits } from "./queue-limits";
import { parseStoreUrl } from "./store/postgres-hosts";
import { openSqliteStore, StoreLockedError } from "./store/sqlite";
import { withFaults } from "./store/faults";
import { StoreError, type FatalStoreError, type QueueStore } from "./store/store";
import { prepareUnixSocket } from "./unix-socket";
import { lookupUser, switchUser, type Account } from "./user";

const version: string = pkg.version;

/** Where start errors and log lines go: set once the command line is read. */
const output: { format: "text" | "json"; file: LogFile | null } = { format: "text", file: null };

/** A start failure: one line on stderr (a JSON object with --log-format json), and in the log file. */
function fail(message: string, code: number): never {
  process.stderr.write(output.format === "json" ? formatLine("json", "ERROR", message) : `mcq: ${message}\n`);
  output.file?.write(formatLine(output.format, "ERROR", message));
  process.exit(code);
}

async function main(): Promise<void> {
  // Messages are nobody else's business: what is created from here on (the data directory, mcq.db
  // and the -wal/-shm SQLite makes by itself, the reserve) is the owner's alone. The unix socket
  // (-a) and the pid file get their modes explicitly.
  process.umask(0o077);
  const argv = process.argv.slice(2);
  const word = subcommand(argv);
  if (word !== null) process.exit(await runTool(word, argv.slice(1), () => printHelp()));
  const cli = parseCommandLine(argv, versionLine(version));
  if (cli.kind === "exit") {
    if (cli.message !== undefined) (cli.code === 0 ? process.stdout : process.stderr).write(cli.message + "\n");
    process.exit(cli.code);
  }
  const { config } = cli;
  output.format = config.logFormat;
  const daemonChild = isDaemonChild();
  if (cli.daemon && !daemonChild) process.exit(await daemonize(argv));
  // Paths as the operator will look for them: the log and every error name them whole.
  config.home = resolve(config.home);
  if (config.pidFile !== null) config.pidFile = resolve(config.pidFile);
  const { log, logFile, detach } = setUpLog(config, cli.logFile);
  const account = cli.user === null ? null : accountToBecome(cli.user);
  makeHome(config.home, account);
  if (account !== null) dropPrivileges(account);

  if (cli.ignored.length > 0) log.info(`accepted for MemcacheQ compatibility, no effect here: ${cli.ignored.join(" ")}`);
  for (const note of cli.notes) log.info(note);

  let returned = 0;
  const store = await openStore(config, log, (n) => (returned = n));
  if (store.deadLetters === undefined && (config.maxDeliveries > 0 || config.queueRules.some((r) => (r.settings.maxDeliveries ?? 0) > 0))) {
    await store.close();
    fail("max_deliveries (dead letters) is not supported by this store", 1);
  }
  if (config.unixSocket !== null) {
    await prepareUnixSocket(config.unixSocket).catch((e: Error) => {
      store.close();
      fail(e.message, 1);
    });
  }
  let server;
  try {
    server = startServer(config, { store, log, version, now: testClock(log) });
  } catch (e) {
    store.close();
    if (e instanceof ListenError || e instanceof TlsError || e instanceof AuthFileError) fail(e.message, 1);
    throw e;
  }
  let http: HttpServer | null = null;
  if (config.http !== null) {
    try {
      http = startHttp(server.context, config.http, config.tls);
    } catch (e) {
      fail(`cannot serve --http on ${config.http.hostname}:${config.http.port}: ${(e as Error).message}`, 1);
    }
    log.info(`metrics on ${http.url}/metrics`);
    if (config.tls !== null) server.context.onCerts = httpsFollows(http, log);
  }
  if (config.pidFile !== null) {
    try {
      writeFileSync(config.pidFile, `${process.pid}\n`);
      chmodSync(config.pidFile, 0o644); // public information, past the umask
    } catch (e) {
      await server.stop();
      fail(`cannot write the pid file ${config.pidFile}: ${reason(e)}`, 1);
    }
  }
  if (logFile !== null) onReload(`the log file ${logFile.path}`, () => logFile.reopen());
  watchSecurity(server, config, log);
  handleSignals(log, stopper(server, http, config.pidFile, log));
  const totals = store.totals();
  log.info(`started: ${totals.queues} queues, ${totals.items} messages, ${returned} open messages returned to their queues; ` +
    `${config.store === null ? `data in ${config.home}, sync ${config.sync}` : `queues in Postgres ${parseStoreUrl(config.store).safe}`}, ` +
    `max body ${config.maxBody} bytes`);
  if (daemonChild) detach();
  // One line per listener, the main one first: tools read the first.
  for (const l of server.listening) process.stdout.write(`mcq ${version} listening on ${l.address}\n`);
}

/** -Y and -Z join SIGHUP; a server others can reach with neither gets one warning. */
function watchSecurity(server: Server, config: Config, log: Logger): void {
  const { auth, refreshCerts } = server.context;
  if (auth !== undefined) onReload(`the authfile ${auth.path}`, () => auth.reload());
  if (refreshCerts !== undefined) onReload(`the TLS certificate ${config.tls!.cert}`, () => log.info(`TLS certificate now: ${refreshCerts()}`));
  if (auth !== undefined || config.unixSocket !== null) return;
  const loopback = (address: string) => /^(127\.|\[::1\]:|localhost:)/.test(address);
  const exposed = server.listening.filter((l) => !l.tls && !loopback(l.address)).map((l) => l.address);
  if (exposed.length > 0) {
    log.warn(`listening on ${exposed.join(", ")} with neither -Y nor TLS: anyone who can connect may read and delete every queue`);
  }
}

/**
 * HTTPS takes each certificate the memcache listeners were moved to. Those moved already, so
 * a failure here is logged, not thrown: the reply and the SIGHUP line say the reload happened.
 */
function httpsFollows(http: HttpServer, log: Logger): (tls: LoadedTls) => void {
  return (tls) => {
    try {
      http.moveTo(tls);
    } catch (e) {
      log.error(`HTTPS keeps the old TLS certificate: ${(e as Error).message}`);
    }
  };
}

/**
 * The log: to --log-file, or to stderr. detach() is for the daemon's copy, at its listening line,
 * where the parent stops reading: from then on the log goes only to the --log-file, and a write
 * to the closed pipes must not end the server.
 */
function setUpLog(config: Config, file: string | null) {
  const logFile = file === null ? null : openLog(resolve(file));
  let toStderr = logFile === null;
  const write = (line: string) => (logFile !== null ? logFile.write(line) : toStderr && process.stderr.write(line));
  const log = createLogger(config.verbose, write, config.logFormat);
  const detach = () => {
    if (logFile === null) log.warn("-d without --log-file: from the listening line on, the log is discarded");
    toStderr = false;
    process.stdout.on("error", () => {});
    process.stderr.on("error", () => {});
  };
  return { log, logFile, detach };
}

/**
 * What SIGTERM and SIGINT do: a clean stop, once, then the stop line and exit 0. A stop that
 * could not close the store cleanly (Postgres not answering: the node could not leave, so its
 * open messages come back only when another node reaps it) says why and exits 1: not a clean stop.
 */
function stopper(server: Server, http: HttpServer | null, pidFile: string | null, log: Logger): (signal: string) => void {
  let stopping = false;
  return async (signal) => {
    if (stopping) return;
    stopping = true;
    log.info(`${signal}: stopping`);
    let code = 0;
    try {
      http?.stop();
      await server.stop();
    } catch (e) {
      log.error(`stop: ${(e as Error).message}; exit 1`);
      code = 1;
    }
    if (pidFile !== null) {
      try {
        unlinkSync(pidFile);
      } catch {
        // Already gone.
      }
    }
    log.info(stopLine(server.context));
    process.exit(code);
  };
}

/** The first argument, when it is a subcommand (or a misspelt one): the tools, or help. */
function subcommand(argv: string[]): string | null {
  const first = argv[0];
  if (first === undefined || first.startsWith("-")) return null;
  if (TOOLS.includes(first) || first === "help") return first;
  fail(`unknown command '${first}'${suggest(first, [...TOOLS, "help"]) || " (see mcq --help)"}`, 2);
}

function printHelp(): void {
  parseCommandLine(["--help"], versionLine(version));
}

/** What the log says at a clean stop: how long the server ran and what it did. */
function stopLine(ctx: Context): string {
  const { stats, store } = ctx;
  const seconds = ((ctx.now() - ctx.startedAt) / 1000).toFixed(1);
  const totals = store.totals();
  return `stopped after ${seconds} s: ${stats.totalConnections} connections, ${stats.setCmds} sets, ${stats.getCmds} gets ` +
    `(${stats.getHits} hits); ${totals.queues} queues, ${totals.items} messages left`;
}

function openLog(path: string): LogFile {
  try {
    return (output.file = openLogFile(path));
  } catch (e) {
    fail(`cannot open the log file ${path}: ${reason(e)}`, 1);
  }
}

/**
 * `MCQ_CLOCK_OFFSET_MS`: the server's clock runs this many ms ahead of the real one. A test seam,
 * like MCQ_FAULTS: a test of delays restarts the server "a minute later" without waiting a minute.
 */
function testClock(log: Logger): (() => number) | undefined {
  const offset = process.env.MCQ_CLOCK_OFFSET_MS;
  if (!offset) return undefined;
  if (!/^-?\d{1,12}$/.test(offset)) fail(`MCQ_CLOCK_OFFSET_MS must be a whole number of milliseconds, not '${offset}'`, 2);
  log.warn(`MCQ_CLOCK_OFFSET_MS=${offset}: the clock is moved (a test seam; never in production)`);
  const ms = Number(offset);
  return () => Date.now() + ms;
}

/** Milliseconds a Postgres batch may take before it fails with SERVER_ERROR (never a hang). */
const POSTGRES_TIMEOUT_MS = 5000;

/**
 * With dead letters configured: where the Postgres store moves an open message of a dead node,
 * opened `deliveries` times, as queue-limits.ts decides for a live node's abort; null to return it.
 */
function deadLetterPolicy(config: Config): DeadLetterPolicy | null {
  const limits = createQueueLimits(config);
  if (!limits.deadLettering) return null;
  return (queue, deliveries) => {
    const s = limits.settings(queue);
    if (s.maxDeliveries === 0 || deliveries < s.maxDeliveries) return null;
    return s.dlq ?? (queue.length + 4 <= 250 ? `${queue}.dlq` : null);
  };
}

/** The store (Postgres with --store, else SQLite in the data directory), or exit 1 saying why not. */
async function openStore(config: Config, log: Logger, onReturned: (count: number) => void): Promise<QueueStore> {
  if (config.store === null) checkHome(config.home);
  try {
    const store =
      config.store === null
        ? openSqliteStore(config.home, { sync: config.sync, cacheMb: config.cacheMb, onFatal: (e) => stopOnFatal(e, log), onReturned })
        : await openPostgresStore(config.store, {
            leaseS: config.nodeTimeoutS,
            reindexS: config.pgReindexS,
            timeoutMs: POSTGRES_TIMEOUT_MS,
            log: (level, message) => log[level](message),
            home: config.home,
            deadLetter: deadLetterPolicy(config),
          });
    const faults = process.env.MCQ_FAULTS;
    if (!faults) return store;
    log.warn(`MCQ_FAULTS=${faults}: store failures are injected (a test seam; never in production)`);
    return withFaults(store, faults);
  } catch (e) {
    if (e instanceof StoreLockedError) fail(`${e.message}; is another server running on -H ${config.home}?`, 1);
    if (config.store !== null && e instanceof StoreError) fail(e.message, 1);
    if (config.store !== null) fail(`cannot open the Postgres store ${parseStoreUrl(config.store).safe}: ${(e as Error).message}`, 1);
    if (e instanceof StoreError) fail(e.message.includes(config.home) ? e.message : `cannot open the data in ${config.home}: ${e.message}`, 1);
    throw e;
  }
}

/**
 * Before SQLite opens it: the data directory and its file must be writable by this user. SQLite
 * would say only "disk I/O error (SQLITE_IOERR_LOCK)", without a path or a user.
 */
function checkHome(home: string): void {
  // An id without a passwd entry (a container's --user 1234) is named by its number.
  const uid = String(process.getuid?.() ?? "");
  const user = lookupUser(uid)?.name ?? `uid ${uid}`;
  for (const [path, mode] of [[home, constants.W_OK | constants.X_OK], [join(home, "mcq.db"), constants.R_OK | constants.W_OK]] as const) {
    if (path !== home && !existsSync(path)) continue;
    try {
      accessSync(path, mode);
    } catch (e) {
      fail(`cannot use ${path === home ? "the data directory" : "the data file"} ${path}: ${reason(e)} (mcq runs as user ${user}, who needs to write there)`, 1);
    }
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

/**
 * -u: only root can switch users; anyone else keeps running as themselves, as MemcacheQ (null).
 * A user that does not exist is an error either way: the same flags would fail as root.
 */
function accountToBecome(user: string): Account | null {
  const account = lookupUser(user) ?? fail(`-u ${user}: no such user (not in /etc/passwd, nor known to getent)`, 1);
  if (process.getuid?.() !== 0) return null;
  if (typeof process.setgroups !== "function" || typeof process.setgid !== "function" || typeof process.setuid !== "function") {
    fail(`-u ${user}: switching users is not supported on this platform; start mcq as ${user} instead`, 1);
  }
  return account;
}

/**
 * Creates the data directory if missing. Under -u it is made as root, before the switch, and
 * the directories made here are given to the user, who could not have made them (e.g. in
 * /var/lib); a directory that already exists keeps its owner.
 */
function makeHome(home: string, owner: Account | null): void {
  if (existsSync(home) && !statSync(home).isDirectory()) fail(`-H ${home}: not a directory (it is a file)`, 1);
  try {
    const first = mkdirSync(home, { recursive: true, mode: 0o700 });
    if (owner === null || first === undefined) return;
    const top = resolve(first);
    for (let dir = resolve(home); ; dir = dirname(dir)) {
      chownSync(dir, owner.uid, owner.gid);
      if (dir === top || dir === dirname(dir)) break;
    }
  } catch (e) {
    fail(`cannot create the data directory ${home}: ${reason(e)}`, 1);
  }
}

function dropPrivileges(account: Account): void {
  try {
    switchUser(account);
  } catch (e) {
    fail(`-u ${account.name}: cannot switch to this user: ${reason(e)}`, 1);
  }
}

await main();
