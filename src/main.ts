#!/usr/bin/env bun
/**
 * Entry point: command line → store → server; signals and exit codes. The only file that
 * reads process.argv or calls process.exit. `mcq check|dump|load|stats` are in tools/.
 *   0  clean stop (SIGTERM, SIGINT), --help, --version
 *   1  cannot start: data directory in use or unreadable, port in use, bad environment
 *   2  bad flag or value
 */
import { mkdirSync, unlinkSync, writeFileSync } from "node:fs";
import pkg from "../package.json";
import { runTool, TOOLS } from "./tools/run";
import { parseCommandLine } from "./cli";
import { daemonize } from "./daemon";
import { startHttp, type HttpServer } from "./http";
import { createLogger } from "./log";
import { ListenError, startServer } from "./server";
import { openSqliteStore, StoreLockedError } from "./store/sqlite";
import { withFaults } from "./store/faults";
import { StoreError } from "./store/store";

const version: string = pkg.version;

function fail(message: string, code: number): never {
  process.stderr.write(`mcq: ${message}\n`);
  process.exit(code);
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  if (TOOLS.includes(argv[0] ?? "")) process.exit(await runTool(argv[0]!, argv.slice(1)));
  const cli = parseCommandLine(argv, version);
  if (cli.kind === "exit") {
    if (cli.message !== undefined) (cli.code === 0 ? process.stdout : process.stderr).write(cli.message + "\n");
    process.exit(cli.code);
  }
  const { config } = cli;
  if (cli.daemon) process.exit(await daemonize(argv, config));
  if (cli.user !== null) dropPrivileges(cli.user);

  const log = createLogger(config.verbose, undefined, config.logFormat);
  if (cli.ignored.length > 0) log.info(`accepted for MemcacheQ compatibility, no effect here: ${cli.ignored.join(" ")}`);

  try {
    mkdirSync(config.home, { recursive: true, mode: 0o750 });
  } catch (e) {
    fail(`cannot create the data directory ${config.home}: ${(e as Error).message}`, 1);
  }
  let store;
  try {
    store = openSqliteStore(config.home, { sync: config.sync, cacheMb: config.cacheMb });
    const faults = process.env.MCQ_FAULTS;
    if (faults) {
      store = withFaults(store, faults);
      log.warn(`MCQ_FAULTS=${faults}: store failures are injected (a test seam; never in production)`);
    }
  } catch (e) {
    if (e instanceof StoreLockedError) fail(`${e.message}; is another server running on -H ${config.home}?`, 1);
    if (e instanceof StoreError) fail(e.message, 1);
    throw e;
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
  log.info(`data in ${config.home}, sync ${config.sync}, max body ${config.maxBody} bytes`);
  process.stdout.write(`mcq ${version} listening on ${server.address}\n`);
}

/** -u: only root can switch users; anyone else keeps running as themselves, as MemcacheQ. */
function dropPrivileges(user: string): void {
  if (process.getuid?.() !== 0) return;
  if (typeof process.setgid !== "function" || typeof process.setuid !== "function") {
    fail(`-u ${user}: switching users is not supported on this platform; start mcq as ${user} instead`, 1);
  }
  try {
    process.setgid(user);
    process.setuid(user);
  } catch (e) {
    fail(`can't switch to user ${user}: ${(e as Error).message}`, 1);
  }
}

await main();
