/**
 * The in-memory side of each queue of the SQLite store (sqlite.ts): its counters and what spares
 * the file work on the hot path.
 *
 * - Read-ahead: the index (qid, opened, id) makes "the head of a queue" one seek, whatever the
 *   backlog, but that seek costs several microseconds. So each queue reads its next READ_AHEAD
 *   messages at once, with the bodies that are small (Queue.ahead).
 * - Deletes at commit: the messages a batch takes from the head of a queue are deleted with one
 *   range delete when it commits, instead of one statement each (Queue.delFrom). With the
 *   read-ahead, a get costs about 0.6 us of SQLite instead of 2.5.
 * - Messages set and taken in the same batch never touch the file: a set only records its
 *   message here (Queue.pending) and the INSERT happens at commit, so when a get in the same
 *   batch takes it first, neither the row nor its index entry is ever written. Both replies wait
 *   for the commit that records the queue's counters, so what a client is told stays true after
 *   a crash. This is the common case of a queue whose consumers keep up.
 */
import type { Statement } from "bun:sqlite";
import type { FeatureCounts } from "./store";

/** Head messages read at once per queue (Queue.ahead). */
export const READ_AHEAD = 64;
/** Bodies up to this size are read with the head ids (Queue.ahead): at most 64 KB per queue. */
export const AHEAD_MAX_BODY = 1024;
/** Larger bodies are written at once: holding them would cost a copy of the whole body. */
export const PENDING_MAX_BODY = 16 * 1024;

/** A message set in the current batch and not yet written (Queue.pending). */
export interface Pending {
  id: number;
  flags: number;
  created: number;
  expires: number;
  body: Uint8Array;
}

export interface Queue {
  id: number;
  name: string;
  total: number;
  fetched: number;
  items: number;
  bytes: number;
  open: number;
  /**
   * The next messages that may be handed out, in order, from index `next` on; the body is null
   * when it is larger than AHEAD_MAX_BODY and read by id when needed. Invariant: they are the
   * first ones of the queue's unopened messages; with `whole`, they are all of them, so an enqueue
   * can append its own. Anything that puts a message back before them (a release) or removes
   * messages behind the list's back (flush, sweep) clears it.
   */
  ahead: AheadRow[];
  next: number;
  whole: boolean;
  /**
   * Messages set in this batch and not yet in the file, newer than every message that is, from
   * index `taken` on. Only a plain get takes from here; anything else that needs the queue as it
   * is in the file (peek, open, flush, a large set, the commit) writes them first (materialize).
   */
  pending: Pending[];
  taken: number;
  /**
   * Ids taken from the head in this batch and not yet deleted: every unopened message of the
   * queue with an id from delFrom to delTo (0: none). Taking from the head in order keeps that
   * true; whatever could break it (a release, reading the head again, a sweep) deletes them first.
   */
  delFrom: number;
  delTo: number;
  /** Messages in the delayed table (counted in items too), and the earliest due time among them. */
  delayed: number;
  nextDue: number;
  /** The feature counters (store.ts), saved with the others in the counter log. */
  features: FeatureCounts;
}

export type Row = [id: number, flags: number, expires: number, body: Uint8Array, created?: number];
/** `created` lets detail() tell the head's age without a query. */
export type AheadRow = [id: number, flags: number, expires: number, body: Uint8Array | null, created: number];

type Counters = Pick<Queue, "total" | "fetched" | "items" | "bytes" | "open" | "features">;

export const noFeatures = (): FeatureCounts => ({ deduplicated: 0, discarded: 0, deadLettered: 0, deadLetterSkipped: 0, fanoutRefused: 0 });

export function newQueue(id: number, name: string, counters: Counters, empty: boolean): Queue {
  // A new queue is empty, so its read-ahead list (empty) is whole; a loaded one is read at first use.
  return {
    id, name, ...counters, ahead: [], next: 0, whole: empty, pending: [], taken: 0, delFrom: 0, delTo: 0,
    delayed: 0, nextDue: Infinity,
  };
}

export interface HeadStatements {
  insert: Statement;
  headRows: Statement;
  byMessageId: Statement;
  deleteTaken: Statement;
}

/** The sums of every queue's items and open counters, kept as they change so `stats` is O(1). */
export interface Sums {
  items: number;
  open: number;
}

/**
 * The operations on queues' heads, over the store's statements. `tx` opens the batch's
 * transaction, `changed` collects the queues whose counters the commit must save, `sums` follows
 * the items taken, and `onExpired` counts a message found expired on the way.
 */
export function createHeads(st: HeadStatements, tx: () => void, changed: Set<Queue>, sums: Sums, onExpired: () => void) {
  const { insert, headRows, byMessageId, deleteTaken } = st;

  function removed(q: Queue, body: Uint8Array): void {
    q.items--;
    sums.items--;
    q.bytes -= body.length;
    changed.add(q);
  }

  /** Writes one message row, keeping the read-ahead list whole when it was. */
  function write(q: Queue, id: number, flags: number, created: number, expires: number, body: Uint8Array): void {
    insert.run(id, q.id, flags, created, expires, body);
    if (q.whole && q.ahead.length - q.next < READ_AHEAD) {
      if (q.next >= READ_AHEAD) {
        // Drop the ids already taken, so the list stays small while a queue is never empty.
        q.ahead.splice(0, q.next);
        q.next = 0;
      }
      q.ahead.push([id, flags, expires, body.length <= AHEAD_MAX_BODY ? body : null, created]);
    } else q.whole = false;
  }

  /** Queues with ids in delFrom..delTo. */
  const deleting = new Set<Queue>();

  /** Records that the head message `id` of q is gone; the row is deleted by deleteTakenRows. */
  function takeHead(q: Queue, id: number): void {
    // Out of order cannot happen while the head is taken in order; if it did, the range so far is
    // deleted first, and a new one starts here.
    if (id < q.delTo) deleteTakenRows(q);
    if (q.delTo === 0) {
      q.delFrom = id;
      deleting.add(q);
    }
    q.delTo = id;
  }

  function deleteTakenRows(q: Queue): void {
    if (q.delTo === 0) return;
    deleteTaken.run(q.id, q.delFrom, q.delTo);
    q.delFrom = q.delTo = 0;
    deleting.delete(q);
  }

  function deleteAllTakenRows(): void {
    for (const q of deleting) deleteTakenRows(q);
  }

  /** Forgets the ids of q to delete: its messages are being deleted anyway. */
  function dropTaken(q: Queue): void {
    q.delFrom = q.delTo = 0;
    deleting.delete(q);
  }

  /** Queues with messages in `pending`. */
  const holding = new Set<Queue>();

  /** Writes q's pending messages, so the file holds the whole queue. */
  function materialize(q: Queue): void {
    for (let i = q.taken; i < q.pending.length; i++) {
      const m = q.pending[i]!;
      write(q, m.id, m.flags, m.created, m.expires, m.body);
    }
    discard(q);
  }

  function materializeAll(): void {
    for (const q of holding) materialize(q);
  }

  /** Forgets q's pending messages: written, taken, or being deleted. */
  function discard(q: Queue): void {
    q.pending.length = 0; // reused: a pipelined set and get empty it every turn
    q.taken = 0;
    holding.delete(q);
  }

  /** Takes the oldest pending message of q that has not expired; null if there is none. */
  function takePending(q: Queue, now: number): Pending | null {
    let m: Pending | null = null;
    while (m === null && q.taken < q.pending.length) {
      const next = q.pending[q.taken++]!;
      removed(q, next.body);
      if (next.expires === 0 || next.expires > now) m = next;
      else onExpired();
    }
    if (q.taken === q.pending.length) discard(q); // all taken: nothing left to write
    return m;
  }

  function forget(q: Queue): void {
    deleteTakenRows(q);
    q.ahead = [];
    q.next = 0;
    q.whole = false;
  }

  /** The first message of q that may be handed out, left in place; expired ones on the way are deleted. */
  function firstLive(q: Queue, now: number): Row | null {
    for (;;) {
      if (q.items - q.open - q.delayed - (q.pending.length - q.taken) <= 0) return null;
      if (q.next === q.ahead.length) {
        deleteTakenRows(q); // else the head read now would include them
        q.ahead = headRows.values(q.id) as AheadRow[];
        q.next = 0;
        q.whole = q.ahead.length < READ_AHEAD;
        if (q.ahead.length === 0) return null;
      }
      const head = q.ahead[q.next]!;
      const row = head[3] !== null ? (head as Row) : (byMessageId.values(head[0])[0] as Row | undefined);
      if (row === undefined) {
        forget(q); // cannot happen while the invariant holds; read the head again
        continue;
      }
      if (row[2] === 0 || row[2] > now) return row;
      tx();
      takeHead(q, row[0]);
      q.next++;
      removed(q, row[3]);
      onExpired();
    }
  }

  /** Holds a message set in this batch (Queue.pending); the commit writes it unless a get takes it. */
  function hold(q: Queue, m: Pending): void {
    q.pending.push(m);
    holding.add(q);
  }

  /** All of q's messages are being deleted: nothing pending is written, nothing taken deleted. */
  function dropMessages(q: Queue): void {
    discard(q);
    dropTaken(q);
  }

  /** dropMessages for every queue. */
  function dropAll(): void {
    for (const q of holding) discard(q);
    for (const q of deleting) dropTaken(q);
  }

  /** Forgets every queue's pending messages and ids to delete: the batch was rolled back. */
  function clear(): void {
    holding.clear();
    deleting.clear();
  }

  return {
    removed,
    write,
    takeHead,
    deleteTakenRows,
    deleteAllTakenRows,
    materialize,
    materializeAll,
    hold,
    dropMessages,
    dropAll,
    takePending,
    forget,
    firstLive,
    clear,
  };
}
