/**
 * What the command layer keeps per connection: its open messages, the replies it has not been
 * sent yet, and the get in progress. The socket itself is in conn.ts; this is plain state, so
 * commands can be tested without one.
 *
 * A reply only grows, by appending. A failed batch cuts a reply back to where that batch began
 * (its mark, batch.ts) and ends it there: a get that already holds committed VALUEs ends with END,
 * anything else becomes one SERVER_ERROR line. Either way it stays one reply.
 */
import { REPLY, serverError } from "./protocol/reply";
import type { Request } from "./protocol/types";
import type { Message } from "./store/store";

/** A message a plain get took for good; if its reply never reaches the socket, it goes back. */
export interface Taken {
  queue: string;
  message: Message;
  /** Index of the reply piece that ends this message's VALUE (the CRLF after the body). */
  piece: number;
}

/**
 * The taken messages of a reply, kept flat as [queue, message, piece, …]: one array per reply
 * and no object per message on the hot path. Read back with takenAt() on the rare paths.
 */
export type TakenList = (string | Message | number)[];

export function takenCount(reply: Reply): number {
  return reply.taken === null ? 0 : reply.taken.length / 3;
}

export function takenAt(reply: Reply, i: number): Taken {
  const t = reply.taken!;
  return { queue: t[3 * i] as string, message: t[3 * i + 1] as Message, piece: t[3 * i + 2] as number };
}

/** Where a reply stood when the current batch first touched it (see batch.ts). */
export interface Mark {
  epoch: number;
  pieces: number;
  size: number;
  values: number;
  taken: number;
}

/** One reply, in pieces, written with its neighbours once its batch has committed. */
export interface Reply {
  pieces: (string | Uint8Array)[];
  /** Bytes in pieces (reply strings are ASCII: one byte per char). */
  size: number;
  /** False while a get still adds to it: nothing from here on is sent yet. */
  complete: boolean;
  /** A get's reply: a failure after a committed VALUE ends it with END rather than an error. */
  get: boolean;
  /** VALUEs so far. */
  values: number;
  /** Messages plain gets took for this reply. */
  taken: TakenList | null;
  /** The last batch that changed what it reports (0: none); it leaves once that one is durable. */
  epoch: number;
  /** A get's: where each batch not yet durable began in it, oldest first (batch.ts). */
  marks: Mark[] | null;
  /** Called after a failure has settled the reply (a waiting get stops waiting). */
  onSettle: (() => void) | null;
}

export function newReply(get: boolean): Reply {
  return { pieces: [], size: 0, complete: false, get, values: 0, taken: null, epoch: 0, marks: null, onSettle: null };
}

/**
 * The pieces of the fixed one-line replies, shared: a line reply's pieces are never changed in
 * place (settle() replaces them), so STORED costs no array of its own.
 */
const SHARED = new Map<string, string[]>(Object.values(REPLY).map((text) => [text, Object.freeze([text]) as string[]]));

/** A complete reply of one line. */
export function lineReply(text: string): Reply {
  return {
    pieces: SHARED.get(text) ?? [text],
    size: text.length,
    complete: true,
    get: false,
    values: 0,
    taken: null,
    epoch: 0,
    marks: null,
    onSettle: null,
  };
}

export function put(reply: Reply, piece: string | Uint8Array): void {
  reply.pieces.push(piece);
  reply.size += piece.length;
}

/**
 * Ends a reply after a failure: cut back to `mark` (what the failed batch added goes; null: keep
 * everything, none of it was in the batch), then END if a VALUE is left, else SERVER_ERROR alone.
 */
export function settle(reply: Reply, mark: Mark | null, reason: string): void {
  if (mark !== null) {
    reply.pieces.length = mark.pieces;
    reply.size = mark.size;
    reply.values = mark.values;
    if (reply.taken !== null) reply.taken.length = 3 * mark.taken;
  }
  if (reply.get && reply.values > 0) put(reply, REPLY.END);
  else {
    const line = serverError(reason);
    reply.pieces = [line];
    reply.size = line.length;
    reply.taken = null;
  }
  reply.complete = true;
  reply.epoch = 0;
  reply.marks = null;
  const onSettle = reply.onSettle;
  reply.onSettle = null;
  onSettle?.();
}

/**
 * A get in progress. `running`: serving its keys; `parked`: key `index` waits in the queue's
 * waiters with a timer; `fetching`: the store answers key `index` later; `ready`: key `index`
 * got its message (or its wait timed out), go on after it; `missed`: the store had none.
 */
export interface PendingGet {
  req: Extract<Request, { kind: "get" }>;
  index: number;
  reply: Reply;
  state: "running" | "parked" | "fetching" | "ready" | "missed";
  timer: ReturnType<typeof setTimeout> | null;
  /** When the wait of key `index` ends (ms), once it first parked; -1 before. */
  deadline: number;
  /** A callback of a take answered later holds it, so it is not reused for the next get. */
  escaped: boolean;
}

export interface Session {
  readonly id: number;
  /** queue → id of the message this connection has open on it. */
  opens: Map<string, number>;
  /** queue → the batch (epoch) whose take opened that message: a give-back follows its fate (giveBackTake). */
  openedIn: Map<string, number>;
  /** When each open message's lease ends (ms), with --open-timeout. */
  leases: Map<string, number>;
  /** Queues whose open message went back because its lease ran out; the next close says so. */
  expired: Set<string>;
  /** Replies in request order, held until their batch commits. */
  held: Reply[];
  /** The get in progress: no further request is taken until it ends. */
  get: PendingGet | null;
  /** A reply built over several turns (a long listing, a hashed login): true once complete; "close" ends the connection. */
  job: (() => boolean | "close") | null;
  /** The last get's state, reused by the next one (saves an allocation per get). */
  spareGet: PendingGet | null;
  /** The batch that last changed its opens, leases or lease notes (batch epoch; 0 never). */
  changedIn: number;
  /** Ends the session's get when a failure settles its reply (one function per session). */
  onGetSettled: (() => void) | null;
  /** The connection is gone: nothing more is sent. */
  closed: boolean;
  /** Plain gets whose store has not answered yet, while the connection went on (get.ts deferGet). */
  deferred: number;
}

let nextId = 1;

export function createSession(): Session {
  return { id: nextId++, opens: new Map(), openedIn: new Map(), leases: new Map(), expired: new Set(), held: [], get: null, job: null, spareGet: null, changedIn: 0, onGetSettled: null, closed: false, deferred: 0 };
}

/** Appends a complete one-line reply. */
export function say(s: Session, text: string): Reply {
  const reply = lineReply(text);
  s.held.push(reply);
  return reply;
}
