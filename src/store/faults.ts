/**
 * Fault injection, to prove the failure paths against the real server (FoundationDB-style
 * failpoints): `MCQ_FAULTS` wraps the store so that some calls throw StoreError. It is a test
 * seam and nothing else; with the variable unset the store is used as it is.
 *
 *   commit=<p>      a commit fails with probability p
 *   dequeue=<p>     a dequeue, open or peek fails with probability p (before touching the store)
 *   release=<p>     a release (abort, disconnect, lease expiry) fails with probability p
 *   poison=<prefix> a commit fails whenever its batch stored into a queue whose name starts so
 *   seed=<n>        the random generator's seed (default 1)
 *
 * e.g. MCQ_FAULTS="poison=fail-" lets a test fail exactly the batch it chooses.
 */
import { StoreError, type QueueStore } from "./store";

export const INJECTED = "injected failure";

export function withFaults(store: QueueStore, spec: string): QueueStore {
  const opts = new Map(spec.split(",").filter(Boolean).map((kv) => kv.split("=") as [string, string]));
  const p = (name: string) => Number(opts.get(name) ?? 0);
  const poison = opts.get("poison") ?? null;
  let seed = Number(opts.get("seed") ?? 1) >>> 0 || 1;
  // xorshift32: reproducible from the seed, so a failing run can be replayed.
  const random = () => {
    seed ^= seed << 13;
    seed >>>= 0;
    seed ^= seed >>> 17;
    seed ^= seed << 5;
    seed >>>= 0;
    return seed / 0x1_0000_0000;
  };
  const maybe = (name: string) => {
    if (p(name) > 0 && random() < p(name)) throw new StoreError(INJECTED);
  };
  let poisoned = false;
  return {
    ...store,
    enqueue(queue, flags, body, expiresAt, now) {
      if (poison !== null && queue.startsWith(poison)) poisoned = true;
      return store.enqueue(queue, flags, body, expiresAt, now);
    },
    dequeue(queue, now) {
      maybe("dequeue");
      return store.dequeue(queue, now);
    },
    open(queue, now) {
      maybe("dequeue");
      return store.open(queue, now);
    },
    peek(queue, now) {
      maybe("dequeue");
      return store.peek(queue, now);
    },
    release(queue, id) {
      maybe("release");
      return store.release(queue, id);
    },
    commit() {
      if (poisoned || (store.dirty() && p("commit") > 0 && random() < p("commit"))) {
        poisoned = false;
        throw new StoreError(INJECTED);
      }
      return store.commit();
    },
    rollback() {
      poisoned = false;
      store.rollback();
    },
  };
}
