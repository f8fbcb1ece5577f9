/**
 * What became of a batch whose COMMIT got no answer in time (postgres-batches.ts): asked on a
 * connection of its own, its backend ended first so that the answer is final. See docs/design.md
 * "A COMMIT with no answer"; an outcome that stays unknown is kept (postgres-unknown.ts).
 */
import type { SQL } from "bun";
import type { Statements } from "./postgres-sql";
import type { Tx } from "./postgres-send";
import { StoreError } from "./store";
import { within } from "../within";
import { nameOf } from "./postgres-hosts";

export interface OutcomeDeps {
  st: Statements;
  timeoutMs: number;
  /** A new connection of its own to the host in use, to ask what became of a batch. */
  side(): SQL;
  /** Keeps a batch whose outcome stays unknown, to ask again later (postgres-unknown.ts). */
  unresolved(tx: Tx): void;
  /** Drops the connection (`only`: if it is still that one, not the one made since; closed once `closeAfter` settles). */
  replaceConnection(only?: SQL | null, closeAfter?: Promise<unknown>): void;
  reason(e: unknown): StoreError;
  log(level: "info" | "warn", message: string): void;
}

/** `work`, or StoreError "no answer within `ms` ms". */
const bounded = <T>(work: Promise<T>, ms: number) => within(work, ms, () => new StoreError(`no answer within ${ms} ms`));

/** `answered`: the batches whose COMMIT answered (postgres-batches.ts). */
export function createOutcomes(d: OutcomeDeps, answered: WeakSet<Tx>) {
  const { st, reason } = d;
  /** Settles once every answer of a sent batch came, or its connection ended (endUnanswered). */
  const drained = new WeakMap<Tx, Promise<unknown>>();
  /** Batches whose backend endUnanswered ends, with why. */
  const ending = new WeakMap<Tx, string>();
  /** The failure of a batch whose backend endUnanswered ended before its COMMIT ran, or null. */
  const notRun = (tx: Tx) => {
    const cause = ending.get(tx);
    return cause === undefined ? null : new StoreError(`${cause}; its backend was ended before its COMMIT ran: nothing of it was done`);
  };

  /** Resolves the batch's COMMIT once, whichever of its timeout and its COMMIT's failure comes first. */
  function settle(tx: Tx, why: unknown): Promise<void> {
    return (tx.resolution ??= resolveCommit(tx, reason(why).message));
  }

  /**
   * The batch's COMMIT was sent and its answer did not come: Postgres may have committed it. Asked
   * on a connection of its own, within the timeout again: its backend is ended if it is still in
   * the transaction (so the answer is final), then pg_xact_status says. Resolves if it committed:
   * its replies go out as if COMMIT had answered (a take's VALUE is sent, not cut). Throws if it
   * did not, and if the answer cannot be had (Postgres down): the batch then fails as before, with
   * a message saying that its outcome is unknown (see docs/design.md "A COMMIT with no answer").
   */
  async function resolveCommit(tx: Tx, cause: string): Promise<void> {
    if (tx.wroteNothing) return void (answered.has(tx) || d.replaceConnection(tx.sentOn)); // no outcome loses anything
    const x = tx.xact;
    if (x === null) return endUnanswered(tx, cause);
    if (tx.server === null) {
      if (!answered.has(tx)) d.replaceConnection(tx.sentOn);
      return unknownNow(tx, `${cause}; the server of transaction ${x.xid} is not known, so its id cannot be asked about: its outcome is unknown`);
    }
    const side = d.side();
    let status: string | null;
    try {
      // Half the budget to end its backend: one that does not go in time is answered "in progress"
      // before the timeout, not mistaken for a Postgres that cannot be asked.
      status = await bounded(st.resolve(side, x.xid, x.pid, Math.round(d.timeoutMs / 2), tx.server), d.timeoutMs);
    } catch (e) {
      const unknown = new StoreError(`${cause}; whether transaction ${x.xid} committed could not be asked (${reason(e).message}): its outcome is unknown`);
      d.log("warn", unknown.message);
      d.unresolved(tx);
      throw unknown;
    } finally {
      void side.close({ timeout: 0 }).catch(() => {});
      // Its backend is gone, or lost to us; unless its COMMIT answered meanwhile: the connection
      // is sound and may carry the next batch already.
      if (!answered.has(tx)) d.replaceConnection(tx.sentOn);
    }
    if (status === "committed") {
      d.log("warn", `${cause}; transaction ${x.xid} had committed: the batch stands`);
      return;
    }
    if (status === "in progress") {
      d.unresolved(tx);
      throw new StoreError(`${cause}; transaction ${x.xid} is still in progress (it could not be ended, or it waits for a synchronous standby): its outcome is unknown`);
    }
    if (status === "another server") {
      // A failover or a restart since it was sent: there its xid may be another transaction's.
      return unknownNow(tx, `${cause}; Postgres is not the server transaction ${x.xid} ran on (a failover or a restart): its outcome is unknown`);
    }
    throw new StoreError(`${cause}; the transaction was rolled back`);
  }

  /**
   * The batch's transaction id did not come back in time (a statement waits on a lock, on I/O):
   * once that wait ends, its backend may run the rest of the batch from its socket, COMMIT too,
   * and a closed connection reaches Postgres late on a real network. So its backend is ended
   * first, from a connection of its own, while this one stays open to read what came before the
   * end: an id that came is asked about as usual; none means the COMMIT never ran (the id's answer
   * is flushed before the backend reads the COMMIT). The pid is still the batch's backend: its
   * connection is open. Later batches go on a new connection meanwhile.
   */
  async function endUnanswered(tx: Tx, cause: string): Promise<void> {
    let release!: () => void;
    d.replaceConnection(tx.sentOn, new Promise<void>((ok) => (release = ok)));
    ending.set(tx, cause);
    const half = Math.round(d.timeoutMs / 2);
    const side = d.side();
    const app = nameOf(tx.sentOn);
    try {
      if (tx.server === null && app === null) throw new StoreError("the server it ran on is not known");
      const how = await bounded(st.end(side, tx.pid!, half, tx.server, app), d.timeoutMs);
      if (how === "another server") throw new StoreError("Postgres is not the server it ran on (a failover or a restart)");
      // Found by its name alone (the identity cannot be read here): none found may be another server.
      if (how === "gone" && tx.server === null) throw new StoreError("no backend of its connection was found on the server asked");
      // Its COMMIT may be waiting for a synchronous standby (never ended): an id that came is asked about.
      if (how === "not ended" && tx.xact === null) throw new StoreError(`its backend did not end within ${half} ms`);
      if (how !== "not ended") await bounded(drained.get(tx)!, half); // the connection ends with its backend
    } catch (e) {
      ending.delete(tx); // not ended: a statement failing now did so on its own
      const unknown = new StoreError(`${cause}; its transaction id never came back and its backend could not be ended (${reason(e).message}): its outcome is unknown`);
      d.log("warn", unknown.message);
      throw unknown;
    } finally {
      release();
      void side.close({ timeout: 0 }).catch(() => {});
    }
    if (tx.xact !== null) return resolveCommit(tx, cause);
    if (tx.wroteNothing) return;
    throw notRun(tx)!;
  }

  /** The batch's outcome cannot be asked about: kept, asked about again later (postgres-unknown.ts), and failed. */
  function unknownNow(tx: Tx, message: string): never {
    d.log("warn", message);
    d.unresolved(tx);
    throw new StoreError(message);
  }

  return {
    settle,
    notRun,
    /** `all`: every answer the batch `tx` waits for, COMMIT's too. */
    watch: (tx: Tx, all: Promise<unknown>[]) => void drained.set(tx, Promise.allSettled(all)),
  };
}
