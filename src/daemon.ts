/**
 * -d: Bun cannot fork, so the daemon is a detached copy of this process, in a session of its
 * own, given the same arguments and told by MCQ_DAEMON_CHILD that it is the copy (rewriting the
 * arguments to drop -d cannot be done right: in `-Hmydata` the d is a value, in `-dv` a flag).
 * The parent waits for the child's listening line and prints it, passing on whatever the child
 * logs until then; if the child exits first, the parent has passed on its error and exits 1.
 * The child writes the pid file (-P) itself, before its listening line.
 */
import { spawn } from "node:child_process";

const CHILD = "MCQ_DAEMON_CHILD";

/** Whether this process is the detached copy: it runs in the foreground of its own session. */
export function isDaemonChild(): boolean {
  return process.env[CHILD] === "1";
}

/** The command that runs this program again: the compiled binary alone, or bun + script. */
function self(): string[] {
  const script = process.argv[1];
  const compiled = script === undefined || script.startsWith("/$bunfs/") || script.startsWith("B:/~BUN/");
  return compiled ? [process.execPath] : [process.execPath, script];
}

/** Starts the daemon; resolves to the exit code of this (the parent) process. */
export function daemonize(argv: string[]): Promise<number> {
  const [command, ...prefix] = self();
  const env: Record<string, string | undefined> = { ...process.env, [CHILD]: "1" };
  delete env.MCQ_DAEMON; // --daemon's variable: the copy must not start a copy in turn
  const child = spawn(command!, [...prefix, ...argv], { detached: true, stdio: ["ignore", "pipe", "pipe"], env });
  return new Promise((resolve) => {
    let ready = false;
    let out = "";
    child.stderr!.on("data", (chunk: Buffer) => {
      if (!ready) process.stderr.write(chunk);
    });
    child.stdout!.on("data", (chunk: Buffer) => {
      out += chunk.toString();
      const line = out.split("\n").find((l) => l.includes(" listening on "));
      if (line === undefined || ready) return;
      ready = true;
      process.stdout.write(line + "\n");
      // The child logs to its --log-file, or nowhere, from its listening line on: these close.
      child.stdout!.destroy();
      child.stderr!.destroy();
      child.unref();
      resolve(0);
    });
    // "close", not "exit": by then everything the child wrote to stderr has been passed on.
    child.on("close", (code, signal) => {
      if (ready) return;
      if (code === null || code === 0) {
        const how = code === null ? `was killed by ${signal}` : "exited";
        process.stderr.write(`mcq: the daemon ${how} before it listened\n`);
      }
      resolve(code === null || code === 0 ? 1 : code);
    });
    child.on("error", (e) => {
      process.stderr.write(`mcq: cannot start the daemon (${command}): ${e.message}\n`);
      resolve(1);
    });
  });
}
