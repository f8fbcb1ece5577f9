/**
 * The parsers of the commands other than get and set (docs/protocol.md): deletes, flushes,
 * stats and the connection's own commands. They are rare next to get and set, so parse.ts looks
 * them up in ADMIN by command word. Each takes the line's tokens (tokens.ts) and the offset after
 * the line; a wrong word count is ERROR, a bad word CLIENT_ERROR, as in memcached.
 */
import { REPLY } from "./reply";
import { MAX_BYTES, name, number, type Parsed, reply, request, rest, word } from "./tokens";

type Parser = (buf: Buffer, tokens: number[], next: number) => Parsed;

/** `delete <q> [0] [noreply]`: memcached's optional time must be 0, a queue cannot delete later. */
function parseDelete(buf: Buffer, tokens: number[], next: number): Parsed {
  const words = tokens.length / 2;
  if (words < 2 || words > 4) return reply(REPLY.ERROR, next);
  const queue = name(buf, tokens, 1);
  const tail = rest(buf, tokens, 2);
  if (queue === null || !(tail === "" || tail === "0" || tail === "noreply" || tail === "0 noreply")) {
    return reply(REPLY.BAD_FORMAT, next);
  }
  return request({ kind: "delete", queue, noreply: tail.endsWith("noreply") }, next);
}

function parseFlush(buf: Buffer, tokens: number[], next: number): Parsed {
  const words = tokens.length / 2;
  if (words < 2 || words > 3) return reply(REPLY.ERROR, next);
  const queue = name(buf, tokens, 1);
  const noreply = words === 3;
  if (queue === null || (noreply && word(buf, tokens, 2) !== "noreply")) return reply(REPLY.BAD_FORMAT, next);
  return request({ kind: "flush", queue, noreply }, next);
}

/** memcached takes an optional delay; a queue has nothing to delay, so any number means "now". */
function parseFlushAll(buf: Buffer, tokens: number[], next: number): Parsed {
  const words = tokens.length / 2;
  if (words > 3) return reply(REPLY.ERROR, next);
  let noreply = false;
  for (let i = 1; i < words; i++) {
    const w = word(buf, tokens, i);
    if (w === "noreply" && i === words - 1) noreply = true;
    else if (i !== 1 || !/^\d{1,10}$/.test(w)) return reply(REPLY.BAD_FORMAT, next);
  }
  return request({ kind: "flush_all", noreply }, next);
}

/** `stats`, `stats reset`, `stats queue`, `stats queue <q>`. */
function parseStats(buf: Buffer, tokens: number[], next: number): Parsed {
  const words = tokens.length / 2;
  if (words === 1) return request({ kind: "stats", section: "general" }, next);
  const sub = word(buf, tokens, 1);
  if (sub === "reset" && words === 2) return request({ kind: "stats", section: "reset" }, next);
  if (sub === "queue" && words === 2) return request({ kind: "stats", section: "queues" }, next);
  if (sub === "queue" && words === 3) {
    const queue = name(buf, tokens, 2);
    if (queue === null) return reply(REPLY.BAD_FORMAT, next);
    return request({ kind: "stats_queue", queue }, next);
  }
  return reply(REPLY.ERROR, next);
}

function parseVerbosity(buf: Buffer, tokens: number[], next: number): Parsed {
  const words = tokens.length / 2;
  if (words < 2 || words > 3) return reply(REPLY.ERROR, next);
  const level = number(buf, tokens, 1, MAX_BYTES);
  const noreply = words === 3;
  if (level < 0 || (noreply && word(buf, tokens, 2) !== "noreply")) return reply(REPLY.BAD_FORMAT, next);
  return request({ kind: "verbosity", level, noreply }, next);
}

function parseRedrive(buf: Buffer, tokens: number[], next: number): Parsed {
  if (tokens.length / 2 !== 3) return reply(REPLY.ERROR, next);
  const from = name(buf, tokens, 1);
  const to = name(buf, tokens, 2);
  if (from === null || to === null) return reply(REPLY.BAD_FORMAT, next);
  return request({ kind: "redrive", from, to }, next);
}

/** A command of one word and no arguments. */
function bare(kind: "version" | "quit" | "refresh_certs"): Parser {
  return (_buf, tokens, next) => (tokens.length === 2 ? request({ kind }, next) : reply(REPLY.ERROR, next));
}

export const ADMIN: Readonly<Record<string, Parser>> = {
  delete: parseDelete,
  flush: parseFlush,
  flush_all: parseFlushAll,
  stats: parseStats,
  verbosity: parseVerbosity,
  redrive: parseRedrive,
  version: bare("version"),
  quit: bare("quit"),
  refresh_certs: bare("refresh_certs"),
};
