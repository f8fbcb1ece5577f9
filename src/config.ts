/**
 * Every setting of the server, with its default, in one table. The CLI (cli.ts) fills a
 * Config from the command line; tests build one with `{ ...DEFAULTS, ...overrides }`.
 */
import type { QueueRule } from "./queue-config";

export interface Config {
  /** Interface to listen on (-l). */
  host: string;
  /** TCP port (-p); 0 picks a free one, which the listening line reports. */
  port: number;
  /** Listen on this unix socket instead of TCP (-s). */
  unixSocket: string | null;
  /** Mode of the unix socket file (-a, octal on the command line). */
  socketMode: number;
  /** Connections beyond this many are closed at once (-c). */
  maxConns: number;
  /** Data directory (-H), created if missing. */
  home: string;
  /** postgres://… (--store, MCQ_STORE): keep the queues in Postgres instead of SQLite in `home`. */
  store: string | null;
  /** With --store: a node silent this many seconds is dead, and its open messages go back (--node-timeout). */
  nodeTimeoutS: number;
  /** With --store: seconds between checks that rebuild bloated indexes (REINDEX CONCURRENTLY); 0 = never (--pg-reindex). */
  pgReindexS: number;
  /** Largest message body in bytes (-B). */
  maxBody: number;
  /** Longest command line in bytes, without its end (docs/protocol.md: 8192). */
  maxLine: number;
  /**
   * full: fsync before STORED; normal: survives kill -9, not power loss; off: tests only (-N = normal).
   * The store's SyncMode, spelled out so that the package's types (fixture.ts) need no other file.
   */
  sync: "full" | "normal" | "off";
  /** SQLite page cache in MB (-m). */
  cacheMb: number;
  /** Honour exptime (--expiry); without it exptime is ignored, as in MemcacheQ. */
  expiry: boolean;
  /** An open message not closed within this many ms goes back to its queue; 0 = never (--open-timeout). */
  openTimeoutMs: number;
  /** How long a `set q/id=<token>` turns away another set with its token, in ms (--dedup-window, seconds). */
  dedupWindowMs: number;
  /** A message opened this many times without a close goes to its dead-letter queue; 0 = never (--max-deliveries). */
  maxDeliveries: number;
  /** A set to `<q>` also stores a copy in every child `<q>+<child>` (--fanout; per queue: queueRules). */
  fanout: boolean;
  /** Messages one queue may hold, 0 = no limit (--max-items; per queue: queueRules). */
  maxItems: number;
  /** Bytes of bodies one queue may hold, 0 = no limit (--max-bytes). */
  maxBytes: number;
  /** `[queues."<glob>"]` tables of the --config file, in file order (queue-config.ts). */
  queueRules: QueueRule[];
  /** Queues at most; a set that would create one more is refused (--max-queues). */
  maxQueues: number;
  /** Bytes buffered across all connections (input and output) before the largest pause (--max-conn-memory, MB). */
  maxConnMemory: number;
  /** Open messages one connection may hold (--max-open). */
  maxOpen: number;
  /** Close a connection silent this many seconds (not one waiting in a blocking get); 0 = never. */
  idleTimeoutS: number;
  /** Unsent reply bytes at which a connection stops being read until the client catches up. */
  maxUnsent: number;
  /** Period of the housekeeping step (give disk space back, checkpoint, sweep expired). */
  maintainMs: number;
  /** Serve the dashboard (/), /metrics, /stats.json and /healthz on this address (--http host:port); null = off. */
  http: { hostname: string; port: number } | null;
  /** Queues with series of their own in /metrics, the deepest first; the rest are summed (--metrics-queues). */
  metricsQueues: number;
  /** Write the process id here (-P); removed at a clean exit. */
  pidFile: string | null;
  /** 0 quiet, 1 verbose (-v), 2 every command (-vv). */
  verbose: number;
  /** One line per event on stderr: "<time> <LEVEL> <message>" or a JSON object. */
  logFormat: "text" | "json";
  /** Every TCP listener (-l, repeatable); empty: one on host and port. See listeners.ts. */
  listen: Listen[];
  /** TLS on the TCP listeners not marked notls: (-Z); null = off. The unix socket stays plain. */
  tls: TlsSettings | null;
  /** Users, passwords and queue rights (-Y); null = no authentication (auth.ts). */
  authFile: string | null;
  /** A connection not logged in this many seconds after it opened is closed (--auth-timeout). */
  authTimeoutS: number;
}

/** One -l value: `[notls:]host[:port]`; without a port, -p's. */
export interface Listen {
  host: string;
  port: number | null;
  /** `notls:`: plain even with -Z. */
  plain: boolean;
}

/** -Z with its certificate files (PEM); verify is what is asked of clients' certificates. */
export interface TlsSettings {
  cert: string;
  key: string;
  ca: string | null;
  verify: "none" | "request" | "require";
}

/**
 * What one connection may hold, input buffered plus output not yet sent (docs/protocol.md): at
 * least 64 MB, and room for two of the largest messages.
 */
export function connBytes(config: Config): number {
  return Math.max(64 * 1024 * 1024, 2 * config.maxBody);
}

export const DEFAULTS: Config = {
  host: "127.0.0.1",
  port: 22201,
  unixSocket: null,
  socketMode: 0o700,
  maxConns: 1024,
  home: "./data",
  store: null,
  nodeTimeoutS: 30,
  pgReindexS: 60,
  maxBody: 1048576,
  maxLine: 8192,
  sync: "full",
  cacheMb: 64,
  expiry: false,
  openTimeoutMs: 0,
  maxOpen: 100,
  maxQueues: 100_000,
  maxItems: 0,
  maxDeliveries: 0,
  fanout: false,
  maxBytes: 0,
  queueRules: [],
  dedupWindowMs: 5 * 60 * 1000, // SQS's
  maxConnMemory: 1024 * 1024 * 1024,
  idleTimeoutS: 0,
  maxUnsent: 4 * 1024 * 1024,
  maintainMs: 200,
  http: null,
  metricsQueues: 1000,
  pidFile: null,
  verbose: 0,
  logFormat: "text",
  listen: [],
  tls: null,
  authFile: null,
  authTimeoutS: 10,
};
