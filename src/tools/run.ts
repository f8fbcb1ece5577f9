/**
 * The subcommands: `mcq backup`, `mcq check`, `mcq dump`, `mcq load`, `mcq stats`, `mcq passwd`,
 * `mcq health` (health.ts), `mcq help`. Each parses its own flags with commander and returns an
 * exit code: 0 done, 1 failed, 2 bad usage.
 */
import { Command, CommanderError } from "commander";
import pkg from "../../package.json";
import { oneLine } from "../cli";
import { DEFAULTS } from "../config";
import { parseHttpAddress } from "../http";
import { backup } from "./backup";
import { suggest } from "../suggest";
import { check } from "./check";
import { ToolError } from "./datadir";
import { dump } from "./dump";
import { dumpPostgres } from "./dump-postgres";
import { checkHealth, healthCommand, target as healthTarget } from "./health";
import { fileChunks } from "./format";
import { load } from "./load";
import { loadPostgres } from "./load-postgres";
import { passwd } from "./passwd";
import { redrive, redrivePostgres } from "./redrive";
import { queueTable, type Target } from "./stats";

export const TOOLS = ["backup", "check", "dump", "load", "redrive", "stats", "passwd", "health"];

function command(name: string, description: string): Command {
  return new Command(`mcq ${name}`).description(description).exitOverride().configureOutput({ writeErr: () => {} });
}

function stdinStream(): AsyncIterable<Uint8Array> {
  return Bun.stdin.stream() as unknown as AsyncIterable<Uint8Array>;
}

type Print = (line: string) => void;

async function backupTool(argv: string[], out: Print, err: Print): Promise<number> {
  const cmd = command("backup", "write a consistent snapshot of the data file, while its server serves or not")
    .option("-H, --home <dir>", "data directory", DEFAULTS.home)
    .argument("<file>", "the snapshot to write (must not exist); restore: copy it to <new dir>/mcq.db, start with -H")
    .parse(argv, { from: "user" });
  out(await backup(cmd.opts<{ home: string }>().home, cmd.args[0]!));
  return 0;
}

async function checkTool(argv: string[], out: Print, err: Print): Promise<number> {
  const o = command("check", "verify a data directory offline (stop the server first)")
    .option("-H, --home <dir>", "data directory", DEFAULTS.home)
    .parse(argv, { from: "user" })
    .opts<{ home: string }>();
  return check(o.home, out);
}

/** -H or --store, not both: a tool's one store. */
function oneStore(tool: string, cmd: Command): { home: string; store?: string } {
  const o = cmd.opts<{ home: string; store?: string }>();
  if (o.store !== undefined && cmd.getOptionValueSource("home") === "cli") {
    throw new ToolError(`mcq ${tool}: -H and --store name two stores; give one (-H: a SQLite data directory, --store: Postgres)`);
  }
  return o;
}

async function dumpTool(argv: string[], out: Print, err: Print): Promise<number> {
  const cmd = command("dump", "write the queues of a data directory (stop the server first), or of a Postgres store (nodes may run), as a versioned dump in JSON Lines")
    .option("-H, --home <dir>", "data directory", DEFAULTS.home)
    .option("--store <url>", "the queues in Postgres instead (postgres://…, as the server's --store): one consistent snapshot")
    .option("--queue <name>", "only this queue")
    .parse(argv, { from: "user" });
  const o = { ...oneStore("dump", cmd), queue: cmd.opts<{ queue?: string }>().queue ?? null };
  const n = o.store === undefined ? dump(o.home, o.queue, pkg.version) : await dumpPostgres(o.store, o.queue, pkg.version);
  err(`dumped ${n} messages`);
  return 0;
}

async function loadTool(argv: string[], out: Print, err: Print): Promise<number> {
  const cmd = command("load", "add the queues of a `mcq dump` file to a data directory (stop the server first), or to a Postgres store (nodes may run), once")
    .option("-H, --home <dir>", "data directory", DEFAULTS.home)
    .option("--store <url>", "the queues in Postgres instead (postgres://…, as the server's --store)")
    .option("--append", "load a dump again that was loaded before (its messages are added twice)")
    .argument("<file>", "the dump, or - for stdin")
    .parse(argv, { from: "user" });
  const file = cmd.args[0]!;
  const o = { ...oneStore("load", cmd), append: cmd.opts<{ append?: boolean }>().append === true };
  if (file !== "-" && !(await Bun.file(file).exists())) throw new ToolError(`mcq load: cannot read ${file}: no such file`);
  const input = file === "-" ? stdinStream() : fileChunks(file);
  const result = o.store === undefined ? await load(o.home, input, o.append) : await loadPostgres(o.store, input, o.append);
  for (const note of result.notes) err(`mcq load: note: ${note}`);
  err(`loaded ${result.messages} messages`);
  return 0;
}

async function redriveTool(argv: string[], out: Print, err: Print): Promise<number> {
  const cmd = command("redrive", "move the waiting messages of one queue to the tail of another (stop the server first, unless --store)")
    .option("-H, --home <dir>", "data directory", DEFAULTS.home)
    .option("--store <url>", "the queues in Postgres instead (postgres://…, as the server's --store); nodes may run meanwhile")
    .argument("<from>", "the queue to empty, e.g. jobs.dlq")
    .argument("<to>", "the queue to append to, e.g. jobs")
    .parse(argv, { from: "user" });
  const o = cmd.opts<{ home: string; store?: string }>();
  const [from, to] = [cmd.args[0]!, cmd.args[1]!];
  out(`OK ${o.store === undefined ? redrive(o.home, from, to) : await redrivePostgres(o.store, from, to)}`);
  return 0;
}

async function passwdTool(argv: string[], out: Print, err: Print): Promise<number> {
  const cmd = command("passwd", "print an authfile line (-Y) with a hashed password read from the terminal or stdin")
    .option("--bcrypt", "bcrypt instead of argon2id")
    .option("--rights <rights>", "a third field, e.g. read=jobs.*,write=jobs.*")
    .argument("<user>", "the user name")
    .parse(argv, { from: "user" });
  const o = cmd.opts<{ bcrypt?: boolean; rights?: string }>();
  return await passwd(cmd.args[0]!, { algorithm: o.bcrypt ? "bcrypt" : "argon2id", rights: o.rights }, out);
}

async function healthTool(argv: string[], out: Print, err: Print): Promise<number> {
  const result = await checkHealth(healthTarget(healthCommand().parse(argv, { from: "user" }).opts()));
  (result.ok ? out : err)(result.line);
  return result.ok ? 0 : 1;
}

async function statsTool(argv: string[], out: Print, err: Print): Promise<number> {
  const o = command("stats", "print the queues of a running server as a table")
  .option("--addr <host:port>", "the server", `127.0.0.1:${DEFAULTS.port}`)
  .option("-s, --unix-socket <path>", "the server's unix socket, instead of --addr")
  .parse(argv, { from: "user" })
  .opts<{ addr: string; unixSocket?: string }>();
  const address = o.unixSocket === undefined ? parseHttpAddress(o.addr) : null;
  if (o.unixSocket === undefined && address === null) throw new ToolError(`mcq stats: --addr wants host:port, not ${o.addr}`);
  const target: Target = o.unixSocket !== undefined ? { unix: o.unixSocket } : address!;
  process.stdout.write(await queueTable(target));
  return 0;
}

/** Each tool parses its own flags and returns its exit code; a thrown ToolError or usage error is handled by runTool. */
const RUN: Record<string, (argv: string[], out: Print, err: Print) => Promise<number>> = {
  backup: backupTool,
  check: checkTool,
  dump: dumpTool,
  load: loadTool,
  redrive: redriveTool,
  passwd: passwdTool,
  health: healthTool,
  stats: statsTool,
};

/** Runs one tool; `mainHelp` prints mcq's own help (for a bare `mcq help`). */
export async function runTool(name: string, argv: string[], mainHelp: () => void): Promise<number> {
  const out = (line: string) => process.stdout.write(line + "\n");
  const err = (line: string) => process.stderr.write(line + "\n");
  try {
    if (name === "help") return help(argv, mainHelp);
    return await (Object.hasOwn(RUN, name) ? RUN[name]! : statsTool)(argv, out, err);
  } catch (e) {
    if (e instanceof CommanderError) {
      if (e.code === "commander.helpDisplayed") return 0;
      err(`mcq ${name}: ${oneLine(e.message).replace(" (see mcq --help)", ` (see mcq help ${name})`)}`);
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

/** `mcq help [command]`: mcq's help, or a tool's. */
async function help(argv: string[], mainHelp: () => void): Promise<number> {
  const [topic, ...rest] = argv;
  if (rest.length > 0) {
    process.stderr.write(`mcq help: one command at most, not ${argv.length}\n`);
    return 2;
  }
  if (topic === undefined) {
    mainHelp();
    return 0;
  }
  if (!TOOLS.includes(topic)) {
    process.stderr.write(`mcq help: unknown command '${topic}'${suggest(topic, TOOLS) || ` (one of ${TOOLS.join(", ")})`}\n`);
    return 2;
  }
  return runTool(topic, ["--help"], mainHelp);
}
