/**
 * The Postgres store's batches on its one connection (postgres.ts keeps the connection and the
 * verbs): each batch is a transaction, begun when its first ops are sent, its statements sent in
 * rounds (postgres-send.ts), committed in order after every earlier one; a failure or the
 * timeout fails it and every later one. Also what must run between batches in the connection's
 * order: background work (heartbeats) and reading the counters again (refresh).
 */
import type { SQL } from "bun";
import type { Statements } from "./postgres-sql";
import type { Mode, Op, Tx } from "./postgres-send";
import type { View } from "./postgres-view";
import { StoreError, type Message } from "./store";

export interface BatchDeps {
  st: Statements;
  node: number;
  channel: string;
  view: View;
  timeoutMs: number;
  send(tx: Tx, c: SQL, ops: Op[]): Promise<void>;
  /** The connection, walking the host list again if the last one was dropped. */
  connection(): Promise<SQL>;
  /** The connection now, or null once dropped. */
  client(): SQL | null;
  replaceConnection(): void;
  reason(e: unknown): StoreError;
  log(level: "info" | "warn", message: string): void;
  closed(): boolean;
  /** Every node's counters, as read when the store opened. */
  sums: Sums;
}

type Sums = Awaited<ReturnType<Statements["totals"]>>;
export type Batches = ReturnType<typeof createBatches>;

export function createBatches(d: BatchDeps) {
  const { st, view, reason } = d;
  let lastSums = d.sums;
  /** Batches since the last refresh read the sums: a refresh replays their changes. */
  let recent: Tx[] = [];
  /** The connection's sequence: the next transaction starts once this resolves. */
  let gate: Promise<void> = Promise.resolve();
  let lastOutcome: Promise<void> = Promise.resolve();
  let cur = newTx();
  let commitFailed = false;
  /** Background work asked for while the open batch had begun: it runs right after that batch. */
  let deferred: ((c: SQL) => Promise<void>)[] = [];

  function newTx(): Tx {
    let handedOff!: () => void;
    const handOff = new Promise<void>((r) => (handedOff = r));
    let breakNow!: (e: StoreError) => void;
    const broken = new Promise<never>((_, fail) => (breakNow = fail));
    broken.catch(() => {});
    const tx: Tx = {
      ops: [], chain: null, failed: null, undone: false, wake: new Set(), dropped: new Set(), deltas: new Map(),
      handOff, handedOff, outcome: Promise.resolve(), timer: null, flushing: false, refreshers: [], asked: [], unanswered: 0, sending: false, heldUndo: [], broken, breakNow,
    };
    recent.push(tx);
    return tx;
  }

  /**
   * Sends the batch's ops not yet sent, after what it sent before (and BEGIN, the first time).
   * One round of statements is out at a time: ops asked for meanwhile go together in the next
   * round, sent when this one has answered, so a busy turn costs a few statements, not a few per
   * connection.
   */
  function flush(tx: Tx): void {
    tx.flushing = false;
    if (tx.ops.length === 0 || tx.undone || tx.sending) return;
    tx.sending = true;
    const first = tx.chain === null;
    if (first) startTimer(tx);
    const sendAll = async (begin: boolean) => {
      try {
        while (tx.ops.length > 0) {
          if (tx.failed !== null) throw tx.failed;
          const ops = tx.ops;
          tx.ops = [];
          for (const o of ops) if (o.k === "take") tx.asked.push(o.t); // failed with the batch, from here on
          const c = begin ? await d.connection() : d.client();
          if (c === null) throw new StoreError("Postgres: connection lost");
          // BEGIN goes in the same round trip as the statements: a failed BEGIN fails them too.
          const started = begin ? c.unsafe("BEGIN").execute() : Promise.resolve();
          begin = false;
          const results = await Promise.allSettled([started, d.send(tx, c, ops)]);
          for (const r of results) if (r.status === "rejected") throw r.reason;
        }
      } finally {
        tx.sending = false;
      }
    };
    tx.chain = first ? gate.then(() => sendAll(true)) : tx.chain!.then(() => sendAll(false));
    tx.chain.catch((e) => failTx(tx, e));
  }

  /** A batch must be done within the timeout: a Postgres that stopped answering is not waited for. */
  function startTimer(tx: Tx): void {
    tx.timer = setTimeout(() => {
      failTx(tx, new StoreError(`Postgres: no answer within ${d.timeoutMs} ms`));
      d.replaceConnection();
      tx.handedOff();
    }, d.timeoutMs);
  }

  function failTx(tx: Tx, e: unknown): void {
    if (tx.failed !== null) return;
    tx.failed = reason(e);
    tx.breakNow(tx.failed);
    tx.refreshers.splice(0).forEach((ok) => ok());
    for (const t of tx.asked.splice(0)) t.fail(tx.failed);
    for (const op of tx.ops) if (op.k === "take") op.t.fail(tx.failed);
    tx.ops = [];
  }

  function take(mode: Mode, queue: string, now: number): Promise<Message | null> {
    const tx = cur;
    return new Promise<Message | null>((resolve, reject) => {
      let answered = false;
      const settled = () => {
        if (!answered) tx.unanswered--;
        answered = true;
      };
      const ok = (m: Message | null) => (settled(), resolve(m));
      const fail = (e: unknown) => (settled(), reject(e));
      tx.unanswered++;
      if (!tx.flushing) {
        tx.flushing = true;
        // After every socket event of this loop iteration: one flush carries them all.
        setImmediate(() => flush(tx));
      }
      tx.ops.push({ k: "take", t: { mode, queue, now, ok, fail } });
    });
  }

  function op(o: Op): void {
    if (d.closed()) throw new StoreError("Postgres: store closed");
    cur.ops.push(o);
  }

  /** Sends the open batch's ops soon, as a take does: someone awaits an answer (a redrive's count). */
  function kick(): void {
    const tx = cur;
    if (tx.flushing) return;
    tx.flushing = true;
    setImmediate(() => flush(tx));
  }

  /** Runs `fn` between batches, in the connection's order; a failure drops the connection. */
  function background(fn: (c: SQL) => Promise<void>): void {
    // The open batch's transaction is on the connection: after it, not inside it.
    if (cur.chain !== null) return void deferred.push(fn);
    const run = gate.then(async () => fn(await d.connection()));
    gate = run.then(
      () => {},
      (e) => {
        d.log("warn", `Postgres: ${reason(e).message}`);
        d.replaceConnection();
      },
    );
  }

  /** Reads the sums again (between batches, in the connection's order) and replays later changes. */
  async function refresh(): Promise<void> {
    if (cur.chain !== null || cur.ops.length > 0) {
      // The open batch has work: the sums are read right after its COMMIT (see commit()).
      return new Promise<void>((ok) => cur.refreshers.push(ok));
    }
    const before = cur; // not begun: it begins after this read, which then does not include it
    const after = gate.then(async () => st.totals(await d.connection()));
    gate = after.then(() => {}, () => {});
    applySums(await after, before);
  }

  /** The view becomes `rows` plus the changes of `first` and every batch after it. */
  function applySums(rows: Awaited<ReturnType<Statements["totals"]>>, first: Tx): void {
    lastSums = rows;
    recent = recent.slice(Math.max(0, recent.indexOf(first)));
    view.reset(lastSums, recent.filter((t) => !t.undone));
  }

  function commit(): void | Promise<void> {
    const tx = cur;
    flush(tx);
    cur = newTx();
    const previous = lastOutcome;
    if (tx.chain === null) {
      // Only counter changes that need no statement (none today): nothing to send.
      tx.handedOff();
      return;
    }
    gate = tx.handOff;
    for (const fn of deferred.splice(0)) background(fn);
    const done = Promise.race([
      tx.broken,
      tx.chain.then(async () => {
        await previous; // a batch is durable only after every earlier one
        if (tx.failed !== null) throw tx.failed;
        const c = d.client();
        if (c === null) throw new StoreError("Postgres: connection lost");
        const parts: Promise<unknown>[] = [];
        if (tx.deltas.size > 0) parts.push(st.count(c, d.node, tx.deltas));
        if (tx.wake.size > 0) parts.push(st.notify(c, d.channel, [...tx.wake]));
        const commit = c.unsafe("COMMIT").execute();
        // Counters read right after this COMMIT, before the next batch begins, include it.
        const sums = tx.refreshers.length > 0 ? st.totals(c) : null;
        sums?.catch(() => {});
        tx.handedOff();
        await Promise.all(parts);
        const r = await commit;
        if (r.command !== "COMMIT") throw new StoreError(`Postgres: the transaction was rolled back`);
        if (tx.failed !== null) throw tx.failed; // timed out meanwhile: already reported as failed
        if (sums !== null) {
          const next = recent[recent.indexOf(tx) + 1];
          const rows = await sums.catch(() => null);
          if (rows !== null && next !== undefined) applySums(rows, next);
        }
        tx.refreshers.splice(0).forEach((ok) => ok());
      }),
    ]).then(
        () => {
          if (tx.timer !== null) clearTimeout(tx.timer);
          commitFailed = false;
        },
        (e) => {
          if (tx.timer !== null) clearTimeout(tx.timer);
          failTx(tx, e);
          tx.refreshers.splice(0).forEach((ok) => ok());
          commitFailed = true;
          d.replaceConnection(); // its transaction is aborted or its state unknown: start afresh
          tx.handedOff();
          throw tx.failed;
        },
      );
    lastOutcome = done; // the next batch fails if this one does
    return done;
  }

  function rollback(): void {
    // The open batch, and every one in flight that failed or follows one that failed.
    let undo = false;
    const undone: Tx[] = [];
    for (const tx of recent) {
      if (tx.failed !== null && !tx.undone) undo = true;
      if ((undo || tx === cur) && !tx.undone) {
        if (tx.failed === null) failTx(tx, new StoreError("Postgres: batch undone"));
        tx.undone = true;
        undone.push(tx);
      }
    }
    for (const tx of undone.reverse()) for (const fn of tx.heldUndo.splice(0).reverse()) fn();
    const open = cur;
    if (open.chain !== null) {
      // The open batch had begun: roll its transaction back before the next one begins.
      gate = open.handOff;
      void open.chain
        .catch(() => {})
        .then(async () => {
          const c = d.client();
          if (c !== null) await c.unsafe("ROLLBACK").execute().catch(d.replaceConnection);
        })
        .finally(() => {
          if (open.timer !== null) clearTimeout(open.timer);
          open.handedOff();
        });
    }
    cur = newTx();
    for (const fn of deferred.splice(0)) background(fn);
    // Batches from here on do not inherit the failure: those it concerned are undone.
    lastOutcome = Promise.resolve();
    view.reset(lastSums, recent.filter((t) => !t.undone));
  }

  return {
    /** The open batch. */
    current: () => cur,
    take,
    op,
    kick,
    background,
    refresh,
    commit,
    rollback,
    dirty: () => cur.ops.length > 0 || cur.chain !== null || cur.deltas.size > 0 || cur.dropped.size > 0,
    /** The last commit failed: new messages are refused until one succeeds. */
    failing: () => commitFailed,
    /** Resolves once the last batch and the background work are done. */
    settled: async () => {
      await lastOutcome.catch(() => {}); // the last batch is committed (or failed) first
      await gate;
    },
  };
}
