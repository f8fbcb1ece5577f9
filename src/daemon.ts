/**
 * -d: Bun cannot fork, so the daemon is a detached copy of this process started without -d.
 * The parent waits for the child's listening line, prints it, writes the pid file (-P) with
 * the child's pid, and exits 0; if the child fails to start, the parent exits with its code.
 */
import { spawn } from "node:child_process";
import { chmodSync, writeFileSync } from "node:fs";
import type { Config } from "./config";

/** The command that runs this program again: the compiled binary alone, or bun + script. */
function self(): string[] {
  const script = process.argv[1];
  const compiled = script === undefined || script.startsWith("/$bunfs/") || script.startsWith("B:/~BUN/");
  return compiled ? [process.execPath] : [process.execPath, script];
}

function withoutDaemonFlag(argv: string[]): string[] {
  // -d takes no value, but it may be combined with other short flags such as -dv.
  return argv.flatMap((a) => {
    if (a === "-d") return [];
    if (/^-[a-zA-Z]+$/.test(a) && a.includes("d") && !a.startsWith("--")) return ["-" + a.slice(1).replaceAll("d", "")];
    return [a];
  }).filter((a) => a !== "-");
}

export function daemonize(argv: string[], config: Config): Promise<number> {
  const [command, ...prefix] = self();
  const child = spawn(command!, [...prefix, ...withoutDaemonFlag(argv)], {
    detached: true,
    stdio: ["ignore", "pipe", config.verbose > 0 ? "inherit" : "ignore"],
  });
  return new Promise((resolve) => {
    let out = "";
    child.stdout!.on("data", (chunk: Buffer) => {
      out += chunk.toString();
      const line = out.split("\n").find((l) => l.includes(" listening on "));
      if (line === undefined) return;
      process.stdout.write(line + "\n");
      if (config.pidFile !== null) {
        writeFileSync(config.pidFile, `${child.pid}\n`);
        chmodSync(config.pidFile, 0o644); // public information, past main's umask
      }
      child.stdout!.destroy();
      child.unref();
      resolve(0);
    });
    child.on("exit", (code) => resolve(code ?? 1));
  });
}
