/**
 * The subcommands: `mcq backup`, `mcq check`, `mcq dump`, `mcq load`, `mcq stats`. Each parses its own flags
 * with commander and returns an exit code: 0 done, 1 failed, 2 bad usage.
 */
import { Command, CommanderError } from "commander";
import { DEFAULTS } from "../config";
import { parseHttpAddress } from "../http";
import { backup } from "./backup";
import { check } from "./check";
import { ToolError } from "./datadir";
import { dump } from "./dump";
import { load } from "./load";
import { queueTable } from "./stats";

export const TOOLS = ["backup", "check", "dump", "load", "stats"];

function command(name: string, description: string): Command {
  return new Command(`mcq ${name}`).description(description).exitOverride().configureOutput({ writeErr: () => {} });
}

export async function runTool(name: string, argv: string[]): Promise<number> {
  const out = (line: string) => process.stdout.write(line + "\n");
  const err = (line: string) => process.stderr.write(line + "\n");
  try {
    if (name === "backup") {
      const cmd = command("backup", "write a consistent snapshot of the data file, while its server serves or not")
        .option("-H, --home <dir>", "data directory", DEFAULTS.home)
        .argument("<file>", "the snapshot to write (must not exist); restore: copy it to <new dir>/mcq.db, start with -H")
        .parse(argv, { from: "user" });
      out(await backup(cmd.opts<{ home: string }>().home, cmd.args[0]!));
      return 0;
    }
    if (name === "check") {
      const o = command("check", "verify a data directory offline (stop the server first)")
        .option("-H, --home <dir>", "data directory", DEFAULTS.home)
        .parse(argv, { from: "user" })
        .opts<{ home: string }>();
      return check(o.home, out);
    }
    if (name === "dump") {
      const o = command("dump", "write the queues of a data directory as JSON Lines (stop the server first)")
        .option("-H, --home <dir>", "data directory", DEFAULTS.home)
        .option("--queue <name>", "only this queue")
        .parse(argv, { from: "user" })
        .opts<{ home: string; queue?: string }>();
      const n = dump(o.home, o.queue ?? null, out);
      err(`dumped ${n} messages`);
      return 0;
    }
    if (name === "load") {
      const cmd = command("load", "add the queues of a `mcq dump` file to a data directory (stop the server first)")
        .option("-H, --home <dir>", "data directory", DEFAULTS.home)
        .argument("<file>", "the dump, or - for stdin")
        .parse(argv, { from: "user" });
      const file = cmd.args[0]!;
      const text = file === "-" ? await Bun.stdin.text() : await Bun.file(file).text();
      err(`loaded ${load(cmd.opts<{ home: string }>().home, text)} messages`);
      return 0;
    }
    const o = command("stats", "print the queues of a running server as a table")
      .option("--addr <host:port>", "the server", `127.0.0.1:${DEFAULTS.port}`)
      .parse(argv, { from: "user" })
      .opts<{ addr: string }>();
    const address = parseHttpAddress(o.addr);
    if (address === null) throw new ToolError(`mcq stats: --addr wants host:port, not ${o.addr}`);
    process.stdout.write(await queueTable(address.hostname, address.port));
    return 0;
  } catch (e) {
    if (e instanceof CommanderError) {
      if (e.code === "commander.helpDisplayed") return 0;
      err(`mcq ${name}: ${e.message.replace(/^error: /, "")}`);
      return 2;
    }
    if (e instanceof ToolError) {
      err(e.message);
      return 1;
    }
    err(`mcq ${name}: ${(e as Error).message}`);
    return 1;
  }
}
