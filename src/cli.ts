/**
 * The command line, by commander: every MemcacheQ 0.2.1 flag plus mcq's own long options.
 * parseCommandLine() is pure apart from commander's help and version output: it returns the
 * Config, or what to do instead (print and exit with a code).
 */
import { parseQueueTables, type QueueRule } from "./queue-config";
import { Command, CommanderError, InvalidArgumentError, Option } from "commander";
import { Database } from "bun:sqlite";
import { readFileSync } from "node:fs";
import license from "../LICENSE" with { type: "text" };
import { DEFAULTS, type Config } from "./config";
import { parseHttpAddress } from "./http";
import { parseListen } from "./listeners";
import { extendedOptions, TlsError, tlsSettings } from "./tls";
import { suggest } from "./suggest";
import { parseStoreUrl } from "./store/postgres-hosts";

export type CommandLine =
  | { kind: "run"; config: Config; daemon: boolean; user: string | null; logFile: string | null; ignored: string[]; notes: string[] }
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

/** The subcommands main.ts runs before this parser, for the help text and suggestions. */
export const SUBCOMMANDS: [name: string, description: string][] = [
  ["backup", "mcq backup <file>: a consistent snapshot of the data file, while its server serves"],
  ["check", "verify a data directory offline"],
  ["dump", "write a data directory's queues (or --store's) as a versioned dump"],
  ["load", "add a dump's queues to a data directory or --store (once per dump)"],
  ["redrive", "mcq redrive <from> <to>: move a queue's messages to another (dead letters back)"],
  ["stats", "print the queues of a running server as a table"],
  ["health", "exit 0 if a running server answers, 1 (saying why) if not"],
  ["passwd", "mcq passwd <user>: an authfile line with a hashed password (-Y)"],
  ["help", "mcq help <command>: that command's flags"],
];

/** -V: the versions a bug report needs. */
export function versionLine(version: string): string {
  const db = new Database(":memory:");
  const sqlite = db.query("SELECT sqlite_version()").values()[0]![0] as string;
  db.close();
  return `mcq ${version} (bun ${Bun.version}, sqlite ${sqlite})`;
}

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

/** -l, repeatable: each value is added to the list (the default is a plain string). */
function listenAddress(value: string, previous: unknown): Config["listen"] {
  const listen = parseListen(value);
  if (listen === null) throw new InvalidArgumentError("not an address such as 127.0.0.1, 0.0.0.0:22201 or notls:127.0.0.1:22202");
  return [...(Array.isArray(previous) ? previous : []), listen];
}

function extended(value: string, previous: unknown): Record<string, string> {
  try {
    return extendedOptions(value, previous as Record<string, string> | undefined);
  } catch (e) {
    throw new InvalidArgumentError((e as Error).message);
  }
}

function storeUrl(value: string): string {
  try {
    parseStoreUrl(value);
  } catch (e) {
    throw new InvalidArgumentError((e as Error).message.replace(/^--store: /, ""));
  }
  return value;
}

function nonEmpty(value: string): string {
  if (value === "") throw new InvalidArgumentError("empty");
  return value;
}

/** An option that can also come from the environment: --max-body → MCQ_MAX_BODY. */
function opt(flags: string, description: string, parse?: (value: string, previous: never) => unknown, fallback?: unknown): Option {
  const option = new Option(flags, description);
  if (parse !== undefined) option.argParser(parse as (value: string, previous: never) => never);
  if (fallback !== undefined) option.default(fallback);
  if (option.long !== undefined) option.env(`MCQ_${option.long.slice(2).replace(/-/g, "_").toUpperCase()}`);
  return option;
}

/**
 * Kubernetes gives every pod, for each Service, variables named after it: for a Service named
 * mcq, MCQ_SERVICE_HOST, MCQ_PORT=tcp://10.0.0.1:22201, MCQ_PORT_22201_TCP… (Docker links did
 * the same). Only <NAME>_PORT can be a setting's name, and a value of that form is an address,
 * not a port: such a variable is not a setting, so it cannot stop the server from starting.
 */
const SERVICE_LINK = /^(tcp|udp|sctp):\/\/\S+:\d+$/;

/** Drops the environment variable of options whose value is a service link; says which. */
function skipServiceLinks(options: Option[]): string[] {
  const notes: string[] = [];
  for (const option of options) {
    const name = option.envVar;
    const value = name === undefined ? undefined : process.env[name];
    if (!name?.endsWith("_PORT") || value === undefined || !SERVICE_LINK.test(value)) continue;
    option.envVar = undefined; // commander reads only the variables of options that name one
    notes.push(`${name}=${value} looks like a Kubernetes service link, not a setting: ignored`);
  }
  return notes;
}

function program(version: string, notes: string[] = []): Command {
  const cmd = new Command("mcq")
    .description("A persistent message queue that speaks the memcache protocol (MemcacheQ's successor).")
    .version(version, "-V, --version", "print the version and exit")
    .helpOption("-h, --help", "print this help and exit");
  const options = [
    opt("-p, --port <num>", "TCP port to listen on (0: any free port)", integer(0, 65535), DEFAULTS.port),
    opt("-l, --listen <addr>", "interface to listen on, [notls:]host[:port]; repeat for more listeners, the first is the main one",
      listenAddress, DEFAULTS.host),
    opt("-s, --unix-socket <path>", "listen on this unix socket instead of TCP", nonEmpty),
    opt("-a, --socket-mode <mask>", "access mask of the unix socket, in octal", octal).default(DEFAULTS.socketMode, "0700"),
    opt("-c, --max-conns <num>", "max simultaneous connections", integer(1, 1_000_000), DEFAULTS.maxConns),
    opt("-H, --home <dir>", "data directory, created if missing", nonEmpty, DEFAULTS.home),
    // At most SQLite's longest value (SQLITE_MAX_LENGTH); a limit of 0 would refuse every message.
    opt("-B, --max-body <num>", "largest message body in bytes", integer(1, 1_000_000_000), DEFAULTS.maxBody),
    opt("--store <url>", "keep the queues in Postgres: postgres://user:pass@host:port[,host2:port…]/db", storeUrl),
    opt("--node-timeout <s>", "with --store: a node silent this long is dead, its open messages go back",
      integer(1, 86400), DEFAULTS.nodeTimeoutS),
    opt("-m, --cache-mb <num>", "page cache size of the store in MB", integer(1, 1_048_576), DEFAULTS.cacheMb),
    new Option("-N", "same as --sync normal: survives kill -9, not power loss"),
    opt("--sync <mode>", "full: fsync before STORED; normal: survives kill -9; off: tests only").choices(["full", "normal", "off"]),
    opt("--expiry", "honour exptime: expired messages are never returned"),
    opt("--open-timeout <ms>", "return a message open longer than this to its queue (0: never)",
      integer(0, 2147483647), DEFAULTS.openTimeoutMs),
    opt("--idle-timeout <s>", "close connections silent this long (0: never)", integer(0, 2147483), DEFAULTS.idleTimeoutS),
    opt("--max-open <num>", "open messages one connection may hold", integer(1, 1_000_000), DEFAULTS.maxOpen),
    opt("--max-deliveries <n>", "a message opened this many times without a close moves to the queue <q>.dlq (0: never)",
      integer(0, 1_000_000), DEFAULTS.maxDeliveries),
    opt("--fanout", "a set to <q> also stores a copy in every existing queue <q>+<child>"),
    opt("--max-items <n>", "messages one queue may hold; a set to a full queue answers SERVER_ERROR queue full (0: no limit)",
      integer(0, 1_000_000_000_000), DEFAULTS.maxItems),
    opt("--max-bytes <n>", "bytes of bodies one queue may hold (0: no limit)", integer(0, 1_000_000_000_000_000), DEFAULTS.maxBytes),
    opt("--dedup-window <s>", "a set with /id=<token> stores nothing if its queue took that token this recently",
      integer(1, 86400), DEFAULTS.dedupWindowMs / 1000),
    opt("--max-queues <num>", "queues at most; a set that would create one more is refused", integer(1, 100_000_000),
      DEFAULTS.maxQueues),
    opt("--max-conn-memory <mb>", "MB buffered across all connections before the largest stop being read",
      integer(1, 1_048_576), DEFAULTS.maxConnMemory / 1024 / 1024),
    opt("--http <addr:port>", "serve the dashboard (/), /metrics, /stats.json and /healthz here", httpAddress),
    opt("--metrics-queues <num>", "queues with their own series in /metrics, the deepest first; the rest are summed",
      integer(0, 1_000_000), DEFAULTS.metricsQueues),
    opt("--log-format <format>", "log lines as text or json").choices(["text", "json"]).default(DEFAULTS.logFormat),
    opt("--log-file <file>", "log here instead of stderr; SIGHUP reopens it (for logrotate)", nonEmpty),
    opt("-Z, --enable-ssl", "TLS on every TCP listener not marked notls: (see --tls-cert)"),
    opt("-o, --extended <opts>", "memcached's TLS options: ssl_chain_cert=,ssl_key=,ssl_ca_cert=,ssl_verify_mode=0-3", extended),
    opt("--tls-cert <pem>", "TLS certificate chain (with -Z)", nonEmpty),
    opt("--tls-key <pem>", "TLS private key (with -Z)", nonEmpty),
    opt("--tls-ca <pem>", "CA certificates that sign client certificates (with -Z)", nonEmpty),
    opt("--tls-verify <mode>", "client certificates: none, request or require").choices(["none", "request", "require"]),
    opt("-Y, --auth-file <file>", "users, passwords and queue rights: clients log in first (README: Security)", nonEmpty),
    opt("--auth-timeout <s>", "close a connection not logged in within this many seconds", integer(1, 86400), DEFAULTS.authTimeoutS),
    opt("--config <file>", "read settings from this TOML file (keys are the long flag names)", nonEmpty),
    opt("-d, --daemon", "run as a daemon"),
    opt("-P, --pid-file <file>", "write the process id to this file", nonEmpty),
    opt("-u, --user <name>", "run as this user (only when started as root)", nonEmpty),
    opt("-v, --verbose", "verbose; -vv: log every command", (v: string, n: number) => (/^\d+$/.test(v ?? "") ? Number(v) : n + 1), 0),
    new Option("-i", "print license info and exit"),
  ];
  notes.push(...skipServiceLinks(options));
  for (const option of options) cmd.addOption(option);
  for (const [flags, description, hasValue] of IGNORED_FLAGS) {
    const option = new Option(flags, `${description}; accepted, no effect`);
    if (hasValue) option.argParser(integer(0, 2147483647));
    cmd.addOption(option);
  }
  return cmd
    .addHelpText("after", "\nCommands (mcq help <command> for their flags):\n" +
      SUBCOMMANDS.map(([name, description]) => `  ${name.padEnd(8)}${description}`).join("\n") + "\n" +
      "\nDefaults: -l 127.0.0.1 -p 22201 -H ./data -B 1048576 -c 1024 --sync full\n" +
      "Settings come from flags, then MCQ_* environment variables (MCQ_MAX_BODY for --max-body), then --config, then defaults.")
    .allowExcessArguments(true) // refused below, naming the word
    .exitOverride()
    .configureOutput({ writeErr: () => {} });
}

class ConfigFileError extends Error {}

/**
 * Fills the options not given by a flag or the environment from a TOML file's keys; returns its
 * `[queues."<glob>"]` tables (queue-config.ts).
 */
function applyConfigFile(cmd: Command, file: string): QueueRule[] {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (e) {
    throw new ConfigFileError(`cannot read --config ${file}: ${(e as Error).message}`);
  }
  let table: Record<string, unknown>;
  try {
    table = Bun.TOML.parse(text) as Record<string, unknown>;
  } catch (e) {
    throw new ConfigFileError(`--config ${file} is not valid TOML: ${(e as Error).message}`);
  }
  let rules: QueueRule[] = [];
  for (const [key, value] of Object.entries(table)) {
    if (key === "queues") {
      try {
        rules = parseQueueTables(value);
      } catch (e) {
        throw new ConfigFileError(`--config ${file}: ${(e as Error).message}`);
      }
      continue;
    }
    const option = cmd.options.find((o) => o.long === `--${key}` && key !== "config");
    if (option === undefined) throw new ConfigFileError(`--config ${file}: unknown key ${key}`);
    const name = option.attributeName();
    const source = cmd.getOptionValueSource(name);
    if (source === "cli" || source === "env") continue;
    if (!option.required && !option.optional) {
      if (typeof value !== "boolean") throw new ConfigFileError(`--config ${file}: ${key} must be true or false`);
      cmd.setOptionValueWithSource(name, value, "config");
      continue;
    }
    if (typeof value === "object") throw new ConfigFileError(`--config ${file}: ${key} must be a string or a number`);
    const text = String(value);
    if (option.argChoices !== undefined && !option.argChoices.includes(text)) {
      throw new ConfigFileError(`--config ${file}: ${key} must be one of ${option.argChoices.join(", ")}`);
    }
    try {
      cmd.setOptionValueWithSource(name, option.parseArg ? option.parseArg(text, undefined as never) : text, "config");
    } catch (e) {
      throw new ConfigFileError(`--config ${file}: ${key} = ${text}: ${(e as Error).message}`);
    }
  }
  return rules;
}

/**
 * Commander's error as one line: "error: unknown option '--prot'\n(Did you mean --port?)" becomes
 * "unknown option '--prot' (did you mean --port?)"; without a suggestion, a pointer
 * to the help.
 */
export function oneLine(message: string): string {
  const [first, ...rest] = message.replace(/^error: /, "").split("\n");
  const hint = rest.map((l) => l.trim()).find((l) => l.startsWith("(Did you mean"));
  return hint === undefined ? `${first} (see mcq --help)` : `${first} ${hint.replace("(Did", "(did")}`;
}

export function parseCommandLine(argv: string[], version: string): CommandLine {
  const notes: string[] = [];
  const cmd = program(version, notes);
  let o: Record<string, unknown>;
  let queueRules: QueueRule[] = [];
  try {
    o = cmd.parse(argv, { from: "user" }).opts();
    if (typeof o.config === "string") {
      queueRules = applyConfigFile(cmd, o.config);
      o = cmd.opts();
    }
  } catch (e) {
    if (e instanceof ConfigFileError) return { kind: "exit", code: 2, message: `mcq: ${e.message}` };
    if (!(e instanceof CommanderError)) throw e;
    if (e.code === "commander.helpDisplayed" || e.code === "commander.version") return { kind: "exit", code: 0 };
    return { kind: "exit", code: 2, message: `mcq: ${oneLine(e.message)}` };
  }
  const extra = cmd.args[0];
  if (extra !== undefined) {
    const hint = suggest(extra, SUBCOMMANDS.map(([name]) => name));
    return { kind: "exit", code: 2, message: `mcq: unexpected argument '${extra}'${hint || " (see mcq --help)"}` };
  }
  if (o.i) return { kind: "exit", code: 0, message: license.trimEnd() };
  let tls: Config["tls"];
  try {
    tls = tlsSettings({ enable: o.enableSsl === true, cert: o.tlsCert as string | undefined, key: o.tlsKey as string | undefined,
      ca: o.tlsCa as string | undefined, verify: o.tlsVerify as string | undefined, extended: o.extended as Record<string, string> | undefined });
  } catch (e) {
    if (e instanceof TlsError) return { kind: "exit", code: 2, message: `mcq: ${e.message}` };
    throw e;
  }
  const listen = Array.isArray(o.listen) ? (o.listen as Config["listen"]) : [];
  const ignored = IGNORED_FLAGS.map(([flags]) => flags.split(" ")[0]!).filter((flag) => o[flag.slice(1)] !== undefined);
  const config: Config = {
    ...DEFAULTS,
    host: listen[0]?.host ?? (o.listen as string),
    port: o.port as number,
    unixSocket: (o.unixSocket as string | undefined) ?? null,
    socketMode: o.socketMode as number,
    maxConns: o.maxConns as number,
    home: o.home as string,
    store: (o.store as string | undefined) ?? null,
    nodeTimeoutS: o.nodeTimeout as number,
    maxBody: o.maxBody as number,
    cacheMb: o.cacheMb as number,
    sync: (o.sync as Config["sync"] | undefined) ?? (o.N ? "normal" : "full"),
    expiry: o.expiry === true,
    openTimeoutMs: o.openTimeout as number,
    maxOpen: o.maxOpen as number,
    maxQueues: o.maxQueues as number,
    dedupWindowMs: (o.dedupWindow as number) * 1000,
    maxItems: o.maxItems as number,
    maxDeliveries: o.maxDeliveries as number,
    fanout: o.fanout === true,
    maxBytes: o.maxBytes as number,
    queueRules,
    maxConnMemory: (o.maxConnMemory as number) * 1024 * 1024,
    idleTimeoutS: o.idleTimeout as number,
    http: (o.http as Config["http"] | undefined) ?? null,
    metricsQueues: o.metricsQueues as number,
    pidFile: (o.pidFile as string | undefined) ?? null,
    verbose: o.verbose as number,
    logFormat: o.logFormat as Config["logFormat"],
    listen,
    tls,
    authFile: (o.authFile as string | undefined) ?? null,
    authTimeoutS: o.authTimeout as number,
  };
  return { kind: "run", config, daemon: o.daemon === true, user: (o.user as string | undefined) ?? null,
    logFile: (o.logFile as string | undefined) ?? null, ignored, notes };
}
