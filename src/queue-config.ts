/**
 * Per-queue settings (issue 12): `[queues."<glob>"]` tables in the --config file, over the global
 * flags (--max-items, --max-bytes, --max-deliveries, --fanout, --open-timeout, --expiry). A glob's `*` matches any bytes, `.` and `+` included; the
 * table with the longest literal prefix (the part before its first `*`) wins, and on a tie the
 * first in the file (DECISIONS #10). Keys are checked when the file is read: an unknown key or a
 * bad value stops the server from starting (exit 2), never a setting silently ignored.
 */

import { globRegExp } from "./rights";

/** The settings of one queue, as they are in force. 0 = no limit. */
export interface QueueSettings {
  /** Messages the queue may hold (delayed and open ones included). */
  maxItems: number;
  /** Bytes of bodies the queue may hold. */
  maxBytes: number;
  /** A set to a full queue drops its oldest messages instead of being refused. */
  discardOld: boolean;
  /** A message opened this many times without a close moves to the dead-letter queue; 0 = never. */
  maxDeliveries: number;
  /** The dead-letter queue; null = `<q>.dlq`. */
  dlq: string | null;
  /** A set also stores a copy in every child queue `<q>+<child>` (fanout.ts). */
  fanout: boolean;
  /** The lease of `get q/open`, in ms: an open message not closed by then goes back; 0 = none. */
  openTimeoutMs: number;
  /** Whether exptime is honoured (a set's exptime makes its message expire). */
  expiry: boolean;
  /** With expiry: the lifetime, in seconds, of a message set with exptime 0; 0 = it never expires. */
  lifetimeS: number;
}

/** One `[queues."<glob>"]` table: its glob and the keys it sets. */
export interface QueueRule {
  glob: string;
  /** The glob as a whole-name match (rights.ts: `*` matches any bytes). */
  match: RegExp;
  settings: Partial<QueueSettings>;
}

/**
 * The keys a queue table takes, their setting, and for a number its largest value and what 0
 * means. `expiry` is true, false or a lifetime (parseExpiry).
 */
const KEYS: Record<string, { setting: keyof QueueSettings; max?: number; zero?: string; name?: true; expiry?: true }> = {
  max_items: { setting: "maxItems", max: 1_000_000_000_000 },
  max_bytes: { setting: "maxBytes", max: 1_000_000_000_000_000 },
  discard_old: { setting: "discardOld" },
  max_deliveries: { setting: "maxDeliveries", max: 1_000_000 },
  dlq: { setting: "dlq", name: true },
  fanout: { setting: "fanout" },
  // As --open-timeout, whose largest value is a timer's.
  open_timeout: { setting: "openTimeoutMs", max: 2_147_483_647, zero: "no lease" },
  expiry: { setting: "expiry", expiry: true },
};
/** The longest lifetime `expiry = <s>` takes: memcached's longest relative exptime, 30 days. */
export const MAX_LIFETIME_S = 60 * 60 * 24 * 30;
const NAME = /^[\x21-\x2e\x30-\x7e]{1,250}$/;

/**
 * `expiry = true` honours exptime (as --expiry), `false` ignores it, and a number of seconds also
 * gives a message set with exptime 0 that lifetime. 0 is refused: it could mean either of the first two.
 */
function parseExpiry(where: string, v: unknown): Partial<QueueSettings> {
  if (typeof v === "boolean") return { expiry: v, lifetimeS: 0 };
  if (typeof v === "number" && Number.isSafeInteger(v) && v >= 1 && v <= MAX_LIFETIME_S) return { expiry: true, lifetimeS: v };
  throw new Error(`${where}: expiry must be true, false, or a lifetime in seconds from 1 to ${MAX_LIFETIME_S}`);
}

/**
 * The `queues` table of a config file as rules, in file order; throws Error naming the table and
 * key that is wrong.
 */
export function parseQueueTables(value: unknown): QueueRule[] {
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new Error('queues must be tables: [queues."<glob>"]');
  }
  const rules: QueueRule[] = [];
  for (const [glob, table] of Object.entries(value as Record<string, unknown>)) {
    const where = `[queues."${glob}"]`;
    if (!NAME.test(glob)) throw new Error(`${where}: a glob is 1 to 250 printable bytes without "/"`);
    if (typeof table !== "object" || table === null || Array.isArray(table)) throw new Error(`${where} must be a table`);
    const settings: Partial<QueueSettings> = {};
    for (const [key, v] of Object.entries(table as Record<string, unknown>)) {
      const known = KEYS[key];
      if (known === undefined) throw new Error(`${where}: unknown key ${key} (known: ${Object.keys(KEYS).join(", ")})`);
      if (known.expiry) {
        Object.assign(settings, parseExpiry(where, v));
      } else if (known.name) {
        if (typeof v !== "string" || !NAME.test(v)) throw new Error(`${where}: ${key} must be a queue name (1 to 250 printable bytes without "/")`);
        (settings as Record<string, unknown>)[known.setting] = v;
      } else if (known.max === undefined) {
        if (typeof v !== "boolean") throw new Error(`${where}: ${key} must be true or false`);
        (settings as Record<string, unknown>)[known.setting] = v;
      } else {
        if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0 || v > known.max) {
          throw new Error(`${where}: ${key} must be a whole number from 0 (${known.zero ?? "no limit"}) to ${known.max}`);
        }
        (settings as Record<string, unknown>)[known.setting] = v;
      }
    }
    rules.push({ glob, match: globRegExp(glob), settings });
  }
  return rules;
}

const literalPrefix = (glob: string) => {
  const star = glob.indexOf("*");
  return star < 0 ? glob.length : star;
};

/** Queues whose settings are remembered (each a small object); past it the memory starts again. */
const CACHE_LIMIT = 100_000;

/**
 * Settings per queue: the global ones, overridden by the most specific matching table. Looked up
 * at every set of a limited server, so each queue's answer is kept.
 */
export function createQueueSettings(globals: QueueSettings, rules: QueueRule[]) {
  // Most specific first; a stable sort keeps file order among equals.
  const ordered = [...rules].sort((a, b) => literalPrefix(b.glob) - literalPrefix(a.glob));
  const cache = new Map<string, QueueSettings>();
  const limited = globals.maxItems > 0 || globals.maxBytes > 0 || rules.some((r) => (r.settings.maxItems ?? 0) > 0 || (r.settings.maxBytes ?? 0) > 0);
  return {
    /** Whether any queue can have a limit: if not, a set need not look. */
    limited,
    /** Whether any table turns fanout on. */
    anyFanout: rules.some((r) => r.settings.fanout === true),
    /** Whether any queue has a lease on its open messages (open_timeout). */
    leases: globals.openTimeoutMs > 0 || rules.some((r) => (r.settings.openTimeoutMs ?? 0) > 0),
    /** Whether any queue honours exptime (expiry). */
    expiring: globals.expiry || rules.some((r) => r.settings.expiry === true),
    of(queue: string): QueueSettings {
      if (ordered.length === 0) return globals;
      let s = cache.get(queue);
      if (s !== undefined) return s;
      const rule = ordered.find((r) => r.match.test(queue));
      s = rule === undefined ? globals : { ...globals, ...rule.settings };
      if (cache.size >= CACHE_LIMIT) cache.clear();
      cache.set(queue, s);
      return s;
    },
  };
}

export type QueueSettingsTable = ReturnType<typeof createQueueSettings>;
