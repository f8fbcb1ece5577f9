/**
 * The subcommands: `mcq check`, `mcq dump`, `mcq load`, `mcq stats`, `mcq health` (health.ts). Each parses its own flags
 * with commander and returns an exit code: 0 done, 1 failed, 2 bad usage.
 */
import { Command, CommanderError } from "commander";
import { DEFAULTS } from "../config";
import { parseHttpAddress } from "../http";
import { check } from "./check";
import { ToolError } from "./datadir";
import { dump } from "./dump";
import { checkHealth, healthCommand, target } from "./health";
import { load } from "./load";
import { queueTable } from "./stats";

export const TOOLS = ["check", "dump", "load", "stats", "health"];

function command(name: string, description: string): Command {
  return new Command(`mcq ${name}`).description(description).exitOverride().configureOutput({ writeErr: () => {} });
}

export async function runTool(name: string, argv: string[]): Promise<number> {
  const out = (line: string) => process.stdout.write(line + "\n");
  const err = (line: string) => process.stderr.write(line + "\n");
  try {
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
    if (name === "health") {
      const result = await checkHealth(target(healthCommand().parse(argv, { from: "user" }).opts()));
      (result.ok ? out : err)(result.line);
      return result.ok ? 0 : 1;
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
