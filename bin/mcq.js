#!/usr/bin/env node
// The `mcq` command of the npm package. mcq runs on Bun (bun:sqlite, Bun.listen): under Bun
// (bunx, bun run) this file runs the server's entry in its own process; under Node (npx) it
// runs `bun` from PATH on that entry and stands in for it: same arguments, stdio, signals and
// exit code. Plain JavaScript, so that Node can read it.
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";

const main = fileURLToPath(new URL("../src/main.ts", import.meta.url));

if (typeof globalThis.Bun !== "undefined") {
  await import(main);
} else {
  // bunx runs a bin whose first line names node with Node, and does not put bun on PATH when it
  // was itself started by its path: it names itself in the environment, so that Bun is used.
  const underBunx = (process.env.npm_config_user_agent ?? "").startsWith("bun/") && process.env.npm_execpath;
  const bun = underBunx ? process.env.npm_execpath : "bun";
  const child = spawn(bun, [main, ...process.argv.slice(2)], { stdio: "inherit", argv0: "bun" });
  child.on("error", (error) => {
    if (error.code === "ENOENT") {
      process.stderr.write(
        "mcq: mcq runs on Bun, and no `bun` was found on PATH.\n" +
          "Install Bun (https://bun.sh, or `npm install -g bun`) and run this again, or run `bunx mcq` instead.\n",
      );
    } else {
      process.stderr.write(`mcq: cannot run bun: ${error.message}\n`);
    }
    process.exit(1); // the binary's code for "cannot start"
  });
  // The server stops cleanly on these; it is the one to get them (a terminal's Ctrl-C reaches
  // both processes, and the server's stop is idempotent).
  for (const signal of ["SIGTERM", "SIGINT", "SIGHUP"]) process.on(signal, () => child.kill(signal));
  child.on("exit", (code, signal) => {
    if (signal === null) process.exit(code ?? 1);
    // Killed by a signal: end the same way, so whoever waits on us sees what happened.
    process.removeAllListeners(signal);
    process.kill(process.pid, signal);
  });
}
