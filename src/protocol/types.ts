/**
 * The requests the parser produces and the command layer executes. Names are
 * validated ASCII strings; `data` is a view into the connection's input buffer,
 * valid only until the framer is pushed again (the store copies it on bind).
 */

/** One key of a `get`: the queue name plus Kestrel's options from `q/opt/opt`. */
export interface GetKey {
  queue: string;
  /** The key exactly as requested, options included: what its VALUE line echoes. */
  key: string;
  open: boolean;
  close: boolean;
  abort: boolean;
  peek: boolean;
  /** Milliseconds to wait for a message when the queue is empty; -1 = do not wait. */
  timeout: number;
  /** Renew this connection's open message on the queue for another open timeout (`touch`). */
  touch: boolean;
  /** With abort: the message becomes visible again after this many ms (`abort/delay=<ms>`); 0 = at once. */
  delay: number;
}

/** The options of a `set` key (`q/delay=<ms>/id=<token>`). */
export interface SetOptions {
  /** Milliseconds before any get may return the message; 0 = at once. */
  delay: number;
  /** Idempotency token (`id=`): a second set with it within the dedup window stores nothing; null = none. */
  id: string | null;
}

export type Request =
  | { kind: "get"; keys: GetKey[]; withIds: boolean }
  | { kind: "set"; queue: string; flags: number; exptime: number; data: Buffer; noreply: boolean; options: SetOptions }
  | { kind: "delete"; queue: string; noreply: boolean }
  | { kind: "flush"; queue: string; noreply: boolean }
  | { kind: "flush_all"; noreply: boolean }
  | { kind: "stats"; section: "general" | "queues" | "reset" }
  | { kind: "stats_queue"; queue: string }
  | { kind: "version" }
  | { kind: "verbosity"; level: number; noreply: boolean }
  | { kind: "quit" }
  /** memcached's: load the TLS certificate files again (listeners.ts). */
  | { kind: "refresh_certs" }
  /** Moves every waiting message of `from` to the tail of `to` (dead letters back, after a fix). */
  | { kind: "redrive"; from: string; to: string }
  /** Input the parser refused: the reply is sent as is; `close` ends the connection after it. */
  | { kind: "error"; reply: string; close: boolean };
