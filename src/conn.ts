/**
 * One client connection: its socket, framer and session, in exactly one state.
 *
 *   reading      takes requests (the normal state)
 *   waiting      its get is parked until a message, a timeout or the end (get.ts endWait)
 *   output-full  the client does not read: no request runs until its output drains
 *   closing      answers what it owes, then ends the socket (quit, a fatal parse error, stop)
 *   closed       the socket is gone; what was never sent goes back (get.ts endSession)
 *
 * Memory is bounded per connection in bytes: reading pauses while the input holds more than one
 * request could need, or while the output is full; requests stop running for the turn once the
 * output they queued reaches maxUnsent; a get reply stops adding VALUEs at its budget (get.ts).
 */
import type { Socket } from "bun";
import type { Undelivered } from "./give-back";
import type { Framer } from "./protocol/framer";
import { takenAt, takenCount, type Reply, type Session, type Taken } from "./session";

export type ConnState = "reading" | "waiting" | "output-full" | "closing" | "closed";

/** A message inside unsent output: once the bytes up to `end` are written, it is delivered. */
interface InFlight {
  queue: string;
  message: Undelivered["message"];
  end: number;
}

interface Chunk {
  bytes: Uint8Array;
  messages: InFlight[] | null;
}

export interface Conn {
  socket: Socket<Conn>;
  session: Session;
  framer: Framer;
  state: ConnState;
  /** Output the socket did not take yet, oldest first. */
  unsent: Chunk[];
  unsentBytes: number;
  paused: boolean;
  /** Bytes it buffers (input not yet run, output not yet sent), as counted in the server's total. */
  buffered: number;
  /** Neither read nor run: the server is over --max-conn-memory and this one has output unsent. */
  overBudget: boolean;
  /** A write found the socket closed: it is ended as if its close event had come. */
  gone: boolean;
  /** When the client last sent anything (for --idle-timeout). */
  lastActive: number;
}

/** Replies up to this size are copied into one buffer for one write; larger ones go piece by piece. */
const COALESCE_BYTES = 256 * 1024;

export function createConn(socket: Socket<Conn>, session: Session, framer: Framer, now: number): Conn {
  return {
    socket,
    session,
    framer,
    state: "reading",
    unsent: [],
    unsentBytes: 0,
    paused: false,
    buffered: 0,
    overBudget: false,
    gone: false,
    lastActive: now,
  };
}

/** Bytes of the replies held for the next commit. */
export function heldBytes(conn: Conn): number {
  let n = 0;
  for (const reply of conn.session.held) n += reply.size;
  return n;
}

/** Pauses or resumes reading from the socket: input is bounded by `inputLimit` bytes. */
export function updateReading(conn: Conn, inputLimit: number): void {
  if (conn.state === "closed") return;
  const pause = conn.state === "output-full" || conn.overBudget || conn.framer.pending() > inputLimit;
  if (pause === conn.paused) return;
  conn.paused = pause;
  if (pause) conn.socket.pause();
  else conn.socket.resume();
}

/**
 * Writes the complete replies at the front of the held list whose batches are durable.
 * Returns the bytes handed to the socket or kept unsent.
 */
export function flushHeld(conn: Conn, durable: (reply: Reply) => boolean): number {
  const s = conn.session;
  let count = 0;
  let size = 0;
  for (const reply of s.held) {
    if (!reply.complete || !durable(reply)) break;
    size += reply.size;
    count++;
  }
  if (count === 0) return 0;
  const replies = s.held.splice(0, count);
  if (size <= COALESCE_BYTES) {
    const bytes = coalesce(replies, size);
    // Where the messages end is worked out only if the socket did not take everything.
    const n = conn.unsent.length === 0 ? sent(conn, conn.socket.write(bytes)) : 0;
    if (n < bytes.length) keep(conn, advance({ bytes, messages: inFlight(replies) }, n));
  } else {
    // Large bodies are written as they are, not copied into one more buffer.
    for (const reply of replies) {
      const taken = takenList(reply);
      reply.pieces.forEach((piece, i) => {
        const bytes = typeof piece === "string" ? Buffer.from(piece, "latin1") : piece;
        const t = taken.find((x) => x.piece === i);
        write(conn, { bytes, messages: t === undefined ? null : [{ queue: t.queue, message: t.message, end: bytes.length }] });
      });
    }
  }
  return size;
}

function write(conn: Conn, chunk: Chunk): void {
  if (conn.unsent.length === 0) {
    const n = sent(conn, conn.socket.write(chunk.bytes));
    if (n === chunk.bytes.length) return;
    chunk = advance(chunk, n);
  }
  keep(conn, chunk);
}

/**
 * Bytes a write took. -1 means the socket is closed: a client that vanished while its reading
 * was paused gets no close event, so this is how the server learns it is gone.
 */
function sent(conn: Conn, n: number): number {
  if (n < 0) conn.gone = true;
  return Math.max(n, 0);
}

function keep(conn: Conn, chunk: Chunk): void {
  conn.unsent.push(chunk);
  conn.unsentBytes += chunk.bytes.length;
}

/** The rest of a chunk after `n` bytes were written: messages fully written are delivered. */
function advance(chunk: Chunk, n: number): Chunk {
  const messages = chunk.messages?.filter((m) => m.end > n).map((m) => ({ ...m, end: m.end - n })) ?? null;
  return { bytes: chunk.bytes.subarray(n), messages: messages?.length ? messages : null };
}

/** Writes what the socket will take of the unsent output; true when all of it is gone. */
export function drainUnsent(conn: Conn): boolean {
  while (conn.unsent.length > 0) {
    const chunk = conn.unsent[0]!;
    const n = sent(conn, conn.socket.write(chunk.bytes));
    conn.unsentBytes -= n;
    if (n < chunk.bytes.length) {
      conn.unsent[0] = advance(chunk, n);
      return false;
    }
    conn.unsent.shift();
  }
  return true;
}

/**
 * The messages plain gets took for this connection that never reached its socket: those in
 * held replies (each with the batch that took it, `takenIn`: batch.ts) and those in unsent
 * output (durable: a reply leaves only then).
 */
export function undelivered(conn: Conn, takenIn: (reply: Reply, index: number) => number): Undelivered[] {
  const out: Undelivered[] = [];
  for (const reply of conn.session.held) {
    if (reply.taken === null) continue;
    takenList(reply).forEach((t, i) => out.push({ queue: t.queue, message: t.message, takenIn: takenIn(reply, i) }));
  }
  for (const chunk of conn.unsent) {
    for (const m of chunk.messages ?? []) out.push({ queue: m.queue, message: m.message, takenIn: 0 });
  }
  conn.session.held = [];
  conn.unsent = [];
  conn.unsentBytes = 0;
  return out;
}

const SHORT_STRING = 64;

/** The replies' pieces in one buffer of `size` bytes (reply strings are ASCII). */
function coalesce(replies: Reply[], size: number): Buffer {
  const bytes = Buffer.allocUnsafe(size);
  let at = 0;
  for (let r = 0; r < replies.length; r++) {
    const pieces = replies[r]!.pieces;
    for (let p = 0; p < pieces.length; p++) {
      const piece = pieces[p]!;
      if (typeof piece !== "string") {
        bytes.set(piece, at);
        at += piece.length;
      } else if (piece.length <= SHORT_STRING) {
        // Reply lines (STORED, END, VALUE headers) are short: a loop copies them several times
        // faster than a native write per line (docs/performance.md, "CPU per request").
        for (let i = 0; i < piece.length; i++) bytes[at + i] = piece.charCodeAt(i);
        at += piece.length;
      } else at += bytes.write(piece, at, "latin1");
    }
  }
  return bytes;
}

const takenList = (reply: Reply): Taken[] => Array.from({ length: takenCount(reply) }, (_, i) => takenAt(reply, i));

/** The messages plain gets took in these replies, with where each ends in their coalesced bytes. */
function inFlight(replies: Reply[]): InFlight[] | null {
  let messages: InFlight[] | null = null;
  let at = 0;
  for (const reply of replies) {
    let next = 0;
    const taken = takenList(reply);
    for (let i = 0; i < reply.pieces.length; i++) {
      at += reply.pieces[i]!.length; // strings are ASCII: one byte per char
      if (next < taken.length && taken[next]!.piece === i) {
        const t = taken[next++]!;
        (messages ??= []).push({ queue: t.queue, message: t.message, end: at });
      }
    }
  }
  return messages;
}
