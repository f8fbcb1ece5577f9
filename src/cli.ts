/**
 * The command line, by commander: every MemcacheQ 0.2.1 flag plus mcq's own long options.
 * parseCommandLine() is pure apart from commander's help and version output: it returns the
 * Config, or what to do instead (print and exit with a code).
 */
import { Command, CommanderError, InvalidArgumentError, Option } from "commander";
import { DEFAULTS, type Config } from "./config";
import { parseHttpAddress } from "./http";

export type CommandLine =
  | { kind: "run"; config: Config; daemon: boolean; user: string | null; ignored: string[] }
  | { kind: "exit"; code: number; message?: string };

/** MemcacheQ flags that mean nothing with this store: accepted and named once in the log. */
const IGNORED_FLAGS: [flags: string, description: string, hasValue: boolean][] = [
  ["-t <num>", "threads (mcq runs one event loop)", true],
  ["-r", "maximize core file limit", false],
  ["-U <num>", "UDP port (mcq has no UDP)", true],
  ["-A <num>", "BerkeleyDB page size", true],
  ["-L <num>", "BerkeleyDB log buffer size in KB", true],
  ["-C <num>", "BerkeleyDB checkpoint period (mcq checkpoints on its own)", true],
  ["-T <num>", "BerkeleyDB memp_trickle period", true],
  ["-S <num>", "queue stats dump period (mcq's counters are always on disk)", true],
  ["-e <num>", "percent of clean cache pages", true],
  ["-E <num>", "pages per BerkeleyDB file", true],
  ["-D <num>", "deadlock detection period in ms", true],
  ["-R", "remove BerkeleyDB log files (mcq always does)", false],
];

const LICENSE = "mcq is released under the MIT License; see the LICENSE file.";

function integer(min: number, max: number) {
  return (value: string): number => {
    if (!/^\d+$/.test(value)) throw new InvalidArgumentError(`not a whole number from ${min} to ${max}`);
    const n = Number(value);
    if (n < min || n > max) throw new InvalidArgumentError(`not a whole number from ${min} to ${max}`);
    return n;
  };
}

function octal(value: string): number {
  if (!/^[0-7]{1,4}$/.test(value)) throw new InvalidArgumentError("not an octal mode such as 0700");
  return parseInt(value, 8);
}

function httpAddress(value: string) {
  const address = parseHttpAddress(value);
  if (address === null) throw new InvalidArgumentError("not an address such as 127.0.0.1:9200");
  return address;
}

function nonEmpty(value: string): string {
  if (value === "") throw new InvalidArgumentError("empty");
  return value;
}

function program(version: string): Command {
  const cmd = new Command("mcq")
    .description("A persistent message queue that speaks the memcache protocol (MemcacheQ's successor).")
    .version(version, "-V, --version", "print the version and exit")
    .helpOption("-h, --help", "print this help and exit")
    .option("-p, --port <num>", "TCP port to listen on (0: any free port)", integer(0, 65535), DEFAULTS.port)
    .option("-l, --listen <addr>", "interface to listen on", nonEmpty, DEFAULTS.host)
    .option("-s, --unix-socket <path>", "listen on this unix socket instead of TCP", nonEmpty)
    .option("-a <mask>", "access mask of the unix socket, in octal", octal, DEFAULTS.socketMode)
    .option("-c, --max-conns <num>", "max simultaneous connections", integer(1, 1_000_000), DEFAULTS.maxConns)
    .option("-H, --home <dir>", "data directory, created if missing", nonEmpty, DEFAULTS.home)
    .option("-B <num>", "largest message body in bytes", integer(0, 2147483647), DEFAULTS.maxBody)
    .option("-m <num>", "page cache size of the store in MB", integer(1, 1_048_576), DEFAULTS.cacheMb)
    .option("-N", "same as --sync normal: survives kill -9, not power loss")
    .addOption(
      new Option("--sync <mode>", "full: fsync before STORED; normal: survives kill -9; off: tests only")
        .choices(["full", "normal", "off"]),
    )
    .option("--expiry", "honour exptime: expired messages are never returned")
    .option("--open-timeout <ms>", "return a message open longer than this to its queue (0: never)",
      integer(0, 2147483647), DEFAULTS.openTimeoutMs)
    .option("--idle-timeout <s>", "close connections silent this long (0: never)", integer(0, 2147483), DEFAULTS.idleTimeoutS)
    .option("--max-open <num>", "open messages one connection may hold", integer(1, 1_000_000), DEFAULTS.maxOpen)
    .option("--http <addr:port>", "serve /metrics, /stats.json and /healthz here", httpAddress)
    .option("-d", "run as a daemon")
    .option("-P <file>", "write the process id to this file", nonEmpty)
    .option("-u <username>", "run as this user (only when started as root)", nonEmpty)
    .option("-v", "verbose; -vv: log every command", (_: string, n: number) => n + 1, 0)
    .option("-i", "print license info and exit");
  for (const [flags, description, hasValue] of IGNORED_FLAGS) {
    const option = new Option(flags, `${description}; accepted, no effect`);
    if (hasValue) option.argParser(integer(0, 2147483647));
    cmd.addOption(option);
  }
  return cmd
    .addHelpText("after", "\nDefaults: -l 127.0.0.1 -p 22201 -H ./data -B 1048576 -c 1024 --sync full")
    .allowExcessArguments(false)
    .exitOverride()
    .configureOutput({ writeErr: () => {} });
}

export function parseCommandLine(argv: string[], version: string): CommandLine {
  const cmd = program(version);
  let o: Record<string, unknown>;
  try {
    o = cmd.parse(argv, { from: "user" }).opts();
  } catch (e) {
    if (!(e instanceof CommanderError)) throw e;
    if (e.code === "commander.helpDisplayed" || e.code === "commander.version") return { kind: "exit", code: 0 };
    return { kind: "exit", code: 2, message: `mcq: ${e.message.replace(/^error: /, "").split("\n")[0]} (see mcq --help)` };
  }
  if (o.i) return { kind: "exit", code: 0, message: LICENSE };
  const ignored = IGNORED_FLAGS.map(([flags]) => flags.split(" ")[0]!).filter((flag) => o[flag.slice(1)] !== undefined);
  const config: Config = {
    ...DEFAULTS,
    host: o.listen as string,
    port: o.port as number,
    unixSocket: (o.unixSocket as string | undefined) ?? null,
    socketMode: o.a as number,
    maxConns: o.maxConns as number,
    home: o.home as string,
    maxBody: o.B as number,
    cacheMb: o.m as number,
    sync: (o.sync as Config["sync"] | undefined) ?? (o.N ? "normal" : "full"),
    expiry: o.expiry === true,
    openTimeoutMs: o.openTimeout as number,
    maxOpen: o.maxOpen as number,
    idleTimeoutS: o.idleTimeout as number,
    http: (o.http as Config["http"] | undefined) ?? null,
    pidFile: (o.P as string | undefined) ?? null,
    verbose: o.v as number,
  };
  return { kind: "run", config, daemon: o.d === true, user: (o.u as string | undefined) ?? null, ignored };
}
