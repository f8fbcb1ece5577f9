/**
 * What the command layer keeps per connection: its open messages, the replies it has not
 * been sent yet, and a get that is waiting for a message. The socket itself stays in
 * server.ts; this is plain state, so commands can be tested without one.
 */
import type { Request } from "./protocol/types";

/** A reply in pieces, sent as one write with its neighbours once its batch is committed. */
export interface Reply {
  pieces: (string | Uint8Array)[];
  /** False while a waiting get still adds to it: nothing from here on is sent yet. */
  complete: boolean;
}

/** A get whose key `index` waits for a message (`get q/t=<ms>`). */
export interface PendingGet {
  req: Extract<Request, { kind: "get" }>;
  index: number;
  reply: Reply;
  timer: ReturnType<typeof setTimeout> | null;
  /** The wait is over (timed out or served): go on with the next key. */
  done: boolean;
}

export interface Session {
  readonly id: number;
  /** queue → id of the message this connection has open on it. */
  opens: Map<string, number>;
  /** When each open message's lease ends (ms), with --open-timeout. */
  leases: Map<string, number>;
  /** Queues whose open message went back because its lease ran out; the next close says so. */
  expired: Set<string>;
  /** Replies in request order, held until their batch commits. */
  held: Reply[];
  /** A blocking get in progress: no further request is taken until it ends. */
  waiting: PendingGet | null;
  /** The connection is gone: nothing more is sent. */
  closed: boolean;
}

let nextId = 1;

export function createSession(): Session {
  return { id: nextId++, opens: new Map(), leases: new Map(), expired: new Set(), held: [], waiting: null, closed: false };
}
