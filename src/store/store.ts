/**
 * The queue store as the command layer sees it: domain verbs and result values, no wire
 * text. Every change joins the current batch; nothing is durable until commit() has
 * returned (or its promise resolved), and the server releases no reply before that.
 * rollback() undoes the whole batch. A store failure (disk full, I/O error) throws
 * StoreError, after which the caller rolls the batch back, except StoreRefused: that call
 * changed nothing, and the batch may go on. A failure after which the store can no longer tell
 * what is on disk throws FatalStoreError, and the server must stop.
 */

export interface Message {
  /** Unique within its queue and never reused by it; `gets` shows it. */
  id: number;
  flags: number;
  /** When it expires (ms since the epoch), 0 for never. */
  expires: number;
  body: Uint8Array;
}

export interface QueueCounters {
  name: string;
  /** Messages ever stored in this queue. */
  total: number;
  /** Messages ever consumed (a plain get, or the close of an open one). */
  fetched: number;
}

/**
 * The counters of the queue features (issue 12), per queue. A store that keeps them (countFeature)
 * saves them with the batch that counted them, as it does total and fetched: exact after a
 * restart or a crash, undone by a rollback, gone with a `delete` of the queue.
 */
export interface FeatureCounts {
  /** Sets answered STORED without storing, their token seen (Dedup.seen counts them). */
  deduplicated: number;
  /** Messages discard_old dropped to make room for a set. */
  discarded: number;
  /** Messages moved to a dead-letter queue (max_deliveries). */
  deadLettered: number;
  /** Messages that stayed for want of a dead-letter queue name. */
  deadLetterSkipped: number;
  /** Fanout copies this queue did not take, being full. */
  fanoutRefused: number;
}
export type FeatureCounter = keyof FeatureCounts;

export interface QueueSummary extends QueueCounters {
  /** Messages stored now, open ones included. */
  items: number;
  /** Bytes of their bodies. */
  bytes: number;
  /** Messages now open (reserved by a consumer). */
  open: number;
  /** Messages not yet due (Delays), where the store keeps them. */
  delayed?: number;
  /** The feature counters, where the store keeps them (countFeature). */
  features?: FeatureCounts;
  /**
   * Where the store counts them itself, exact over every node (Postgres): messages moved to a
   * dead-letter queue from this one. Else the server counts them (queue-limits.ts).
   */
  deadLettered?: number;
}

export interface QueueDetail extends QueueSummary {
  /** Age of the oldest message in milliseconds, 0 when empty. */
  oldestAgeMs: number;
  /** Messages stored (counted in items) that no get may return yet: a delay runs (Delays). */
  delayed?: number;
  /** Sets answered STORED without storing, their token seen (Dedup): features.deduplicated, where kept. */
  deduplicated?: number;
  /** Where the store counts them itself (Postgres): messages discard_old dropped. */
  discarded?: number;
}

export interface StoreTotals {
  queues: number;
  items: number;
  open: number;
  expired: number;
}

/** A result now, or later: a networked store answers takes after a round trip. */
export type Maybe<T> = T | Promise<T>;

/**
 * The command layer's view. Takes (dequeue, open, peek) and commit may complete later; the
 * other verbs join the batch at once and report what the store knows locally.
 */
export interface QueueStore {
  /**
   * Appends a message to the tail of `queue`, creating the queue. `expiresAt` 0 = never (ms).
   * Throws StoreRefused, having changed nothing, when there is no room for it.
   */
  enqueue(queue: string, flags: number, body: Uint8Array, expiresAt: number, now: number): number;
  /** Removes and returns the head message, or null when there is none that may be handed out. */
  dequeue(queue: string, now: number): Maybe<Message | null>;
  /** Returns the head message without removing it. */
  peek(queue: string, now: number): Maybe<Message | null>;
  /** Reserves the head message: it stays stored but is skipped until confirm() or release(). */
  open(queue: string, now: number): Maybe<Message | null>;
  /** Deletes a reserved message; false if it is no longer reserved. */
  confirm(queue: string, id: number): boolean;
  /** Returns a reserved message to its place in the queue; false if it was not reserved. */
  release(queue: string, id: number): boolean;
  /**
   * Puts back, at its place by id, a message a dequeue took whose reply never reached its
   * client: it counts as not fetched (or as stored anew, if its queue was deleted meanwhile).
   */
  restore(queue: string, message: Message, now: number): void;
  /**
   * Deletes the queue and its messages; false if it did not exist. A store shared by nodes
   * answers from what its statement found, once the batch is sent (Postgres): its view may not
   * have read a queue another node or a load made within the last second.
   */
  drop(queue: string): Maybe<boolean>;
  /** Empties the queue, which keeps existing and keeps its counters. */
  flush(queue: string): void;
  /** Empties every queue. */
  flushAll(): void;
  /** Every queue with its counters, sorted by name in byte order. */
  list(): QueueCounters[];
  /** Whether the queue exists (a set would not create it). */
  has(queue: string): boolean;
  /**
   * Every queue's counters, in no set order, read from memory. The iterator is live, so a caller
   * may spread it over event-loop turns: a queue created or dropped meanwhile may or may not appear.
   */
  summaries(): IterableIterator<QueueSummary>;
  /** One queue's items and bytes, from memory (per-queue limits ask at every set); null if it does not exist. */
  size?(queue: string): { items: number; bytes: number } | null;
  /**
   * Adds 1 to a feature counter of `queue`, in the batch (FeatureCounts); nothing if the queue
   * does not exist. A store without it leaves the command layer to count since the start.
   */
  countFeature?(queue: string, counter: FeatureCounter): void;
  /**
   * discard_old on a store shared by nodes (Postgres): puts in the batch, before the set of
   * `adding` bytes that follows, the drop of the oldest messages of `queue` that may be handed out
   * until the set fits max_items/max_bytes, decided and counted (discarded) by the store. False if
   * the set must be refused all the same (open and delayed messages alone fill the queue).
   */
  discardOld?(queue: string, maxItems: number, maxBytes: number, adding: number): boolean;
  /** One queue's counters and oldest age: no more than a couple of index lookups. */
  detail(queue: string, now: number): QueueDetail | null;
  totals(): StoreTotals;
  /** Deletes up to `limit` expired messages; returns how many. */
  sweepExpired(now: number, limit: number): number;
  /**
   * Makes the batch durable. May be asynchronous (a networked store). Throws (or rejects with)
   * StoreError, or FatalStoreError when the server must stop (see there).
   */
  commit(): void | Promise<void>;
  /** Undoes every change since the last commit. */
  rollback(): void;
  /** Whether the current batch has uncommitted changes. */
  dirty(): boolean;
  /** Whether a new message could be stored now (false while the disk is full or commits fail). */
  writable(now: number): boolean;
  /**
   * Set by the server on a store shared by several nodes (Postgres): called when messages may
   * have become available in `queue` (null: in any queue) through another node, so that gets
   * waiting here look again.
   */
  onAvailable?: ((queue: string | null) => void) | null;
  /**
   * Postgres: open messages this node held went back without it (another node reaped it): the
   * sessions holding them forget them, as after a lease expiry.
   */
  onLost?: ((ids: Set<number>) => void) | null;
  /**
   * Postgres: how many times this node found itself reaped (onLost), and whether it holds open
   * message `id` of `queue` now. An undone close or give-back puts an open back only if the store
   * still holds it and no loss came between: else the message went back, maybe to another
   * consumer. Absent (SQLite, memory): nothing is ever lost that way.
   */
  losses?(): number;
  holds?(queue: string, id: number): boolean;
  /**
   * A store shared by nodes: reads every node's counters again, so that the counters it reports
   * next include all that was committed before the call. Stats wait for it.
   */
  refresh?(): Promise<void>;
  /**
   * Takes are answered once their batch is sent, at commit (Postgres: no transaction waits open
   * for the caller). A plain get then need not stop its connection: it takes its place in the
   * batch, its reply is filled when the store answers, and the connection's next requests run
   * meanwhile (get.ts deferGet). Such a store may reorder a batch's ops (like ones together), so it
   * must keep each session's order: `actor` says whose requests run now.
   */
  answersAtCommit?: boolean;
  /** The session whose requests run now (turn.ts sets it; 0: none, housekeeping). */
  actor?: number;
  /**
   * Batches this store lets commit at once (default 2, turn.ts). Past it, the open batch waits
   * until one lands, gathering the requests that arrive meanwhile, up to the batch's bound (turn.ts BATCH_MAX_REQUESTS, BATCH_MAX_BYTES).
   */
  maxInFlight?: number;
  /**
   * The longest one of its batches can stay in flight, ms, if more than a stop's own flush (5 s):
   * a stop waits that long for a batch's replies before it closes their connections.
   */
  commitBoundMs?: number;
  /** A small step of housekeeping (give disk space back, checkpoint). Call when idle. */
  maintain(): void;
  /** Closes the store; a networked store resolves once its last batch has committed. */
  close(): void | Promise<void>;
  /** Only a store kept in one file has it: what `mcq backup` copies while the server serves. */
  snapshots?: Snapshots;
  /** Delayed delivery; a store without it refuses `set q/delay=` and `get q/abort/delay=`. */
  delays?: Delays;
  /** Idempotent sets; a store without it refuses `set q/id=`. */
  dedup?: Dedup;
  /** Dead letters; a server with max_deliveries refuses to start on a store without it. */
  deadLetters?: DeadLetters;
}

/**
 * Dead letters (`--max-deliveries`, `redrive`): moving messages between queues in the batch, so a
 * move is atomic with what triggered it: after kill -9 a message is in exactly one queue.
 */
export interface DeadLetters {
  /** How many times the open message `id` of `queue` was opened; -1 if it is not open. */
  deliveries(queue: string, id: number): number;
  /**
   * Moves the open message `id` of `queue` to the tail of `target` (created if need be), with a new
   * id and its delivery count reset (else its first abort there would move it on); it counts as fetched from `queue` and stored in `target`. False if
   * it was not open.
   */
  moveOpen(queue: string, id: number, target: string, now: number): boolean;
  /**
   * Moves every waiting message of `from` (not open, not delayed) to the tail of `to`, in order,
   * with new ids and their delivery counts reset; returns how many (a networked store: later).
   */
  redrive(from: string, to: string, now: number): Maybe<number>;
}

/**
 * Idempotent sets (`set q/id=<token>`): the tokens a queue was set with, each until its window
 * ends, kept in the batch like any change, so that they survive what the message survives.
 */
export interface Dedup {
  /** Whether `queue` took a set with `token` whose window has not ended; if so, counts it (deduplicated). */
  seen(queue: string, token: string, now: number): boolean;
  /** Remembers that `queue` took a set with `token`, until `until` (ms). */
  remember(queue: string, token: string, until: number): void;
  /**
   * The set that remembered a token, and its fanout copies, are all in the batch: no later set
   * depends on that token (a store that ties the copies to it, Postgres, stops doing so here).
   */
  settled?(): void;
  /** Forgets up to `limit` tokens whose window ended; returns how many. */
  sweep(now: number, limit: number): number;
}

/**
 * Delayed delivery (`set q/delay=<ms>`, `get q/abort/delay=<ms>`). A delayed message is stored
 * and counted in its queue's items, but no take sees it before its due time. Once due, it takes
 * its place at the tail of its queue, as if set then: FIFO among due messages is by due time,
 * then by arrival. It gets a new id at that moment (ids stay increasing in queue order). The
 * store makes a message due when its queue is next used (any take or enqueue at or after the
 * due time sees it), or when promoteDue() finds it.
 */
export interface Delays {
  /** enqueue(), with the message hidden until `dueAt` (ms since the epoch). */
  enqueue(queue: string, flags: number, body: Uint8Array, expiresAt: number, now: number, dueAt: number): number;
  /** release(), with the message hidden until `dueAt`; false if it was not reserved. */
  release(queue: string, id: number, dueAt: number, now: number): boolean;
  /** Makes up to `limit` due messages visible; returns the queues that gained some. */
  promoteDue(now: number, limit: number): string[];
}

/**
 * A consistent copy of the data file, made by another process while the server serves
 * (snapshot-socket.ts, tools/backup.ts). Between hold() and release() the file does not change.
 */
export interface Snapshots {
  /**
   * Call between batches. Moves everything committed into the data file and stops anything
   * else from being written into it (commits go on, into the WAL); returns the file's path.
   */
  hold(): string;
  /** The copy is done: the file may take checkpoints again. */
  release(): void;
}

/** A store that answers every take at once (SQLite, memory). */
export interface SyncQueueStore extends QueueStore {
  dequeue(queue: string, now: number): Message | null;
  peek(queue: string, now: number): Message | null;
  open(queue: string, now: number): Message | null;
}

/** The store's own failure: the reason goes to the client as SERVER_ERROR <reason>. */
export class StoreError extends Error {
  constructor(reason: string, options?: { cause?: unknown }) {
    super(reason, options);
    this.name = "StoreError";
  }
}

/**
 * The store can no longer promise that what it acknowledged is on disk: an fsync failed (EIO).
 * Linux then marks the pages that failed as clean, so the next fsync may report success for
 * data that never reached the disk; going on would answer STORED for writes that can vanish.
 * Once raised, every later call of the store raises it again, so nothing more is acknowledged.
 * The server must stop: answer the requests it has read with SERVER_ERROR (this error's
 * message), accept nothing more, and exit 1, leaving the files to crash recovery at the next
 * start, which reads what really is on disk.
 */
export class FatalStoreError extends StoreError {
  constructor(reason: string, options?: { cause?: unknown }) {
    super(reason, options);
    this.name = "FatalStoreError";
  }
}

/**
 * A request the store turned down before changing anything, such as a set when the disk has no
 * room for it: that request alone fails (SERVER_ERROR <reason>); the rest of its batch is intact
 * and may still commit. Any other StoreError leaves the batch to be rolled back.
 */
export class StoreRefused extends StoreError {
  constructor(reason: string) {
    super(reason);
    this.name = "StoreRefused";
  }
}
