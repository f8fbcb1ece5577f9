/**
 * What each signal does to a running server. Only TERM and INT stop it. HUP reloads: each part
 * that can (the log file now; the TLS certificates and the authfile later) adds a
 * reloader here, and one HUP runs them all. USR1 and USR2 are ignored: by default they would kill
 * the process at once, without the clean stop. Like HUP, which is logrotate's signal.
 */
import type { Logger } from "./log";

type Reloader = { what: string; reload: () => void | Promise<void> };

const reloaders: Reloader[] = [];

/** Adds something SIGHUP reloads; `what` names it in the log ("the log file /var/log/mcq.log"). */
export function onReload(what: string, reload: () => void | Promise<void>): void {
  reloaders.push({ what, reload });
}

/** Runs every reloader; one that fails is logged and the others still run. */
export async function reloadAll(log: Logger): Promise<void> {
  if (reloaders.length === 0) log.info("SIGHUP: nothing to reload (no --log-file)");
  for (const { what, reload } of reloaders) {
    try {
      await reload();
      log.info(`SIGHUP: reloaded ${what}`);
    } catch (e) {
      log.error(`SIGHUP: cannot reload ${what}: ${(e as Error).message}; keeping the old one`);
    }
  }
}

/** Installs the handlers. Before the listening line: whoever reads it may signal at once. */
export function handleSignals(log: Logger, stop: (signal: string) => void): void {
  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGINT", () => stop("SIGINT"));
  process.on("SIGHUP", () => void reloadAll(log));
  for (const signal of ["SIGUSR1", "SIGUSR2"] as const) process.on(signal, () => log.info(`${signal}: ignored`));
}
