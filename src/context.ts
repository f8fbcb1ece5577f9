/**
 * What a command needs besides its request and session: the store, the counters, the
 * settings, the batch it joins, the clock, and the waiting gets. server.ts builds one;
 * tests build one over the memory store with a frozen clock.
 */
import type { Auth } from "./auth";
import type { Batch } from "./batch";
import type { Config } from "./config";
import type { Logger } from "./log";
import type { QueueLimits } from "./queue-limits";
import type { Fanout } from "./fanout";
import type { Session } from "./session";
import type { Stats } from "./stats";
import type { QueueStore } from "./store/store";
import type { LoadedTls } from "./tls";

/** Gets waiting for a message, per queue, in the order they arrived. */
export interface Waiters {
  add(queue: string, session: Session): void;
  remove(queue: string, session: Session): void;
  first(queue: string): Session | undefined;
  count(): number;
  /** Waiting gets per queue. */
  byQueue(): Map<string, number>;
}

export interface Context {
  store: QueueStore;
  stats: Stats;
  config: Config;
  batch: Batch;
  log: Logger;
  waiters: Waiters;
  /** Every live session (for leases and stats). */
  sessions: Set<Session>;
  /** Milliseconds since the epoch; injected so tests can freeze time. */
  now(): number;
  /** When the server started (ms). */
  startedAt: number;
  version: string;
  /** A session's get can go on, or its connection take requests again: run it in this turn. */
  resume(session: Session): void;
  /** Work to redo in a later turn because its batch failed (returning a message to its queue). */
  retry(task: () => void): void;
  /** The server is stopping: gets no longer wait. */
  stopping: boolean;
  /** Fanout (fanout.ts); absent in tests that build a context without it. */
  fanout?: Fanout;
  /** Per-queue limits (queue-limits.ts); absent in tests that build a context without them. */
  limits?: QueueLimits;
  /** -Y: logins and queue rights; absent without it. */
  auth?: Auth;
  /** -Z: loads the certificate files again; returns what was loaded, throws keeping the old. */
  refreshCerts?: () => string;
  /** -Z with --http: HTTPS moves to the certificate refreshCerts loaded. */
  onCerts?: (tls: LoadedTls) => void;
}

export function createWaiters(): Waiters {
  const byQueue = new Map<string, Session[]>();
  let total = 0;
  return {
    add(queue, session) {
      const list = byQueue.get(queue);
      if (list === undefined) byQueue.set(queue, [session]);
      else list.push(session);
      total++;
    },
    remove(queue, session) {
      const list = byQueue.get(queue);
      const i = list === undefined ? -1 : list.indexOf(session);
      if (i < 0) return;
      list!.splice(i, 1);
      if (list!.length === 0) byQueue.delete(queue);
      total--;
    },
    first: (queue) => byQueue.get(queue)?.[0],
    count: () => total,
    byQueue: () => new Map([...byQueue].map(([queue, list]) => [queue, list.length])),
  };
}
