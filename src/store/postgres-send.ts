/**
 * How a batch's operations reach Postgres: in order, one statement per run of like operations,
 * all pipelined on the batch's connection; and how the answers become the takes' results, the
 * batch's counter changes and what this node holds open. The types are shared with postgres.ts.
 */
import type { SQL } from "bun";
import type { Delta, Removed, Row, Statements } from "./postgres-sql";
import type { FeatureOp } from "./postgres-features";
import type { Changes, View } from "./postgres-view";
import { StoreError, type Message } from "./store";

/** The order of like ops in a round (gather); kinds not here (drop, flush, sweep) are barriers. */
const RANK: Partial<Record<Op["k"], number>> = { insert: 0, restore: 1, confirm: 2, release: 3 };
const TAKE_RANK: Record<Mode, number> = { dequeue: 4, open: 5, peek: 6 };
/** Sets with a delay or a token rank as sets (their order among sets holds); other features are barriers. */
const rank = (o: Op) => (o.k === "take" ? TAKE_RANK[o.t.mode] : o.k === "feature" ? (o.f.k === "insert" ? 0 : -1) : RANK[o.k] ?? -1);

/** Bodies larger than this are inserted one per statement (see postgres-sql.ts insert). */
const LARGE_BODY = 64 * 1024;

export type Mode = "dequeue" | "open" | "peek";
/** What a flush removed from a queue. */
export type Flushed = Pick<Delta, "items" | "bytes" | "open" | "delayed">;
export interface Take {
  mode: Mode;
  queue: string;
  now: number;
  ok: (m: Message | null) => void;
  fail: (e: unknown) => void;
}
export type Op =
  | { k: "insert"; queue: string; flags: number; created: number; expires: number; body: Uint8Array }
  | { k: "restore"; queue: string; m: Message; created: number }
  | { k: "take"; t: Take }
  | { k: "confirm" | "release"; queue: string; id: number; bytes: number }
  /** `answer`: whether the queue existed, as its statement found (postgres-sql.ts drop). */
  | { k: "drop"; queue: string; answer: (existed: boolean) => void; fail: (e: unknown) => void }
  /** `guess`: per queue, what the view counted out at once (postgres-empty.ts); the answer corrects it. */
  | { k: "flush"; queue: string | null; guess: Map<string, Flushed> }
  | { k: "sweep"; now: number; limit: number }
  | { k: "feature"; f: FeatureOp };

export interface Tx extends Changes {
  /** What the batch does, in the order its requests asked; sent whole at commit. */
  ops: Op[];
  /**
   * Per op, its layer: how many takes its session asked for before it in this batch. A session
   * runs on past a get whose answer is pending (get.ts deferGet), so its ops after a take must
   * stay after that take; ops of one layer may be reordered (gather).
   */
  layers: number[];
  /** Takes asked for in this batch, per session (store.actor). */
  takesBy: Map<number, number>;
  /** Counter changes of `deltas` that the statements count in Postgres themselves (see count()). */
  counted: Map<string, Delta>;
  failed: StoreError | null;
  /** The connection the batch was sent on (null until sent): only that one is dropped when it fails. */
  sentOn: SQL | null;
  /** Undone by rollback(): it never commits, its changes are forgotten. */
  undone: boolean;
  /** Queues whose messages may have become available: notified at commit. */
  wake: Set<string>;
  timer: ReturnType<typeof setTimeout> | null;
  /** Waiting for the counters read after this batch's COMMIT. */
  refreshers: (() => void)[];
  /** Undoes this batch's changes to `held`, newest last. */
  heldUndo: (() => void)[];
  /** Its transaction id and backend, once Postgres answered them (postgres-sql.ts xact). */
  xact: { xid: string; pid: number } | null;
  /** Its backend, answered early in the batch (postgres-sql.ts pid): known even if its xid never comes. */
  pid: number | null;
  /** Postgres answered that it has no transaction id: it wrote nothing, whatever its COMMIT did. */
  wroteNothing: boolean;
  /** Finding out whether its COMMIT landed, when its answer did not come (postgres-batches.ts). */
  resolution: Promise<void> | null;
  /** The server it was sent to (postgres-sql.ts identity), for when its outcome stays unknown. */
  server: string | null;
  /**
   * What its takes took, as they answered: the rows dequeued (whole: a give-back puts them back
   * by id), the ids opened, and how many take statements have not answered yet. Kept if its
   * outcome stays unknown (postgres-unknown.ts).
   */
  taken: Required<Row>[];
  leased: number[];
  unanswered: number;
  /** Rejects when the batch fails (its timeout, a statement): nothing waits on a hung connection. */
  broken: Promise<never>;
  breakNow: (e: StoreError) => void;
}

/** What sending needs from the store. */
export interface Sender {
  st: Statements;
  node: number;
  view: View;
  change(tx: Tx, queue: string, d: Partial<Delta>, created?: number): void;
  hold(tx: Tx, id: number, h: { queue: string; bytes: number; deliveries?: number } | null): void;
  reason(e: unknown): StoreError;
  /** The queue features' statements (postgres-features.ts). */
  feature(tx: Tx, c: SQL, ops: FeatureOp[]): Promise<void>;
  /**
   * A statement of the batch failed: the batch is failed now (postgres-batches.ts failTx), before
   * any take is rejected. A take's rejection reaches batch.fail() at once (get-deferred.ts), and
   * the store must then know which batch to undo: this one, not only the open one.
   */
  failed(tx: Tx, e: unknown): void;
}

export function createSender(deps: Sender) {
  const { st, node, view, change, hold, reason } = deps;
  const by = <T, K>(items: T[], key: (t: T) => K) => {
    const m = new Map<K, T[]>();
    for (const i of items) (m.get(key(i)) ?? m.set(key(i), []).get(key(i))!).push(i);
    return m;
  };

    /**
   * Sends ops as statements, one per run of like ops, all pipelined: every statement is on the
   * connection when this returns (the statement functions call execute() before their first
   * await), so the caller can put COMMIT behind them. Resolves when all have answered.
   */
  async function send(tx: Tx, c: SQL): Promise<void> {
    const ops = gather(tx.ops, tx.layers);
    const pending: Promise<unknown>[] = [];
    for (let i = 0; i < ops.length; ) {
      let j = i + 1;
      const kind = (o: Op) => (o.k === "take" ? `take:${o.t.mode}` : o.k === "feature" ? `feature:${o.f.k}` : o.k);
      const alone = (o: Op) => o.k === "flush" || o.k === "sweep" || (o.k === "insert" && o.body.length > LARGE_BODY);
      while (j < ops.length && kind(ops[j]!) === kind(ops[i]!) && !alone(ops[i]!) && !alone(ops[j]!)) j++;
      pending.push(
        statement(tx, c, ops.slice(i, j)).catch((e) => {
          deps.failed(tx, e); // the first failing statement names the failure, not the ones aborted after it
          throw e;
        }),
      );
      i = j;
    }
    const results = await Promise.allSettled(pending);
    for (const r of results) if (r.status === "rejected") throw r.reason;
  }

  /**
   * Puts like ops next to each other, so that a batch costs one statement per kind and layer
   * rather than one per connection (pair load interleaves set, get, set, get). Only one session's
   * order must hold: every reply of the batch leaves at its commit, so requests of different
   * connections in it are concurrent and may run in any order. A session's ops are in layers,
   * split by its takes (Tx.layers): sorting by layer, then kind, keeps its takes in order and
   * each of its ops on the same side of each of its takes; within a layer, its take sorts last,
   * and moving sets before confirms and releases (other rows) changes nothing it could see.
   * Drop, flush and sweep stay where they are, and nothing moves across them.
   */
  function gather(ops: Op[], layers: number[]): Op[] {
    if (ops.length < 3) return ops;
    const out: Op[] = [];
    let segment: number[] = [];
    const close = () => {
      segment.sort((a, b) => layers[a]! - layers[b]! || rank(ops[a]!) - rank(ops[b]!) || a - b);
      for (const i of segment) out.push(ops[i]!);
      segment = [];
    };
    ops.forEach((o, i) => {
      if (rank(o) >= 0) segment.push(i);
      else {
        close();
        out.push(o);
      }
    });
    close();
    return out;
  }

  function statement(tx: Tx, c: SQL, ops: Op[]): Promise<unknown> {
    const op = ops[0]!;
    const col = <T>(f: (o: any) => T) => ops.map(f);
    switch (op.k) {
      case "insert":
        if (ops.length === 1 && op.body.length > LARGE_BODY) return st.insertOne(c, op.queue, op.flags, op.created, op.expires, op.body);
        return st.insert(c, col((o) => o.queue), col((o) => o.flags), col((o) => o.created), col((o) => o.expires), col((o) => o.body));
      case "restore":
        return st.restore(c, col((o) => o.m.id), col((o) => o.queue), col((o) => o.m.flags), col((o) => o.created), col((o) => o.m.expires), col((o) => o.m.body));
      case "take":
        return takes(tx, c, ops.map((o) => (o as { t: Take }).t));
      case "confirm":
      case "release": {
        const run = op.k === "confirm" ? st.confirm(c, col((o) => o.id), node) : st.release(c, col((o) => o.id), node);
        return run.then((found) => {
          // Not found: a flush or drop elsewhere deleted it; undo what the view counted for it
          // (the statement counted in Postgres only what it found).
          const ids = new Set(found.map((r) => r.id));
          for (const o of ops as Extract<Op, { k: "confirm" | "release" }>[]) {
            if (ids.has(o.id) || tx.undone || !view.has(o.queue)) continue;
            if (o.k === "confirm") change(tx, o.queue, { items: 1, bytes: o.bytes, open: 1, fetched: -1 });
            else change(tx, o.queue, { open: 1 });
          }
        });
      }
      case "drop": {
        const drops = ops as Extract<Op, { k: "drop" }>[];
        return st.drop(c, drops.map((o) => o.queue)).then(
          (existed) => {
            // A queue deleted twice in a row: the first found it, the second found nothing.
            const found = new Set(existed);
            for (const o of drops) o.answer(found.delete(o.queue));
          },
          (e) => {
            for (const o of drops) o.fail(e);
            throw e;
          },
        );
      }
      case "flush":
        return st.flush(c, op.queue === null ? null : [op.queue], node).then((rows) => settleFlush(tx, op.guess, rows));
      case "sweep":
        return st.sweep(c, op.limit, node).then((rows) => settleSwept(tx, rows));
      case "feature":
        return deps.feature(tx, c, (ops as Extract<Op, { k: "feature" }>[]).map((o) => o.f));
    }
  }

  /** Counts in the view what a sweep removed (the statement counted it in Postgres). */
  function settleSwept(tx: Tx, rows: Removed[]): void {
    if (tx.undone) return;
    for (const r of rows) if (view.has(r.queue)) change(tx, r.queue, { items: -r.n, bytes: -r.bytes, open: -r.open, expired: r.n });
  }

  /**
   * The view counted a flush out as it knew the queues (`guess`); the statement counted in
   * Postgres what it deleted, which may be more (another node's sets, a load) or less (a flush
   * elsewhere). The view follows that. (A queue the view does not know comes with the counters
   * read right after the COMMIT: postgres-empty.ts.)
   */
  function settleFlush(tx: Tx, guess: Map<string, Flushed>, rows: (Removed & { delayed: number })[]): void {
    if (tx.undone) return;
    const found = new Map(rows.map((r) => [r.queue, r]));
    for (const queue of new Set([...guess.keys(), ...found.keys()])) {
      const g = guess.get(queue) ?? { items: 0, bytes: 0, open: 0, delayed: 0 };
      const r = found.get(queue) ?? { n: 0, bytes: 0, open: 0, delayed: 0 };
      if (!view.has(queue)) continue;
      change(tx, queue, { items: g.items - r.n, bytes: g.bytes - r.bytes, open: g.open - r.open, delayed: g.delayed - r.delayed });
    }
  }

  async function takes(tx: Tx, c: SQL, list: Take[]): Promise<void> {
    const mode = list[0]!.mode;
    const groups = by(list, (t) => t.queue);
    const queues = [...groups.keys()];
    let rows: Row[];
    if (mode !== "peek") tx.unanswered++; // a peek takes nothing
    try {
      // Expiry is judged on Postgres's clock (postgres-sql.ts), not on the take's `now`.
      if (mode === "peek") rows = await st.peek(c, queues);
      else if (mode === "open") rows = await st.open(c, queues, queues.map((q) => groups.get(q)!.length), node);
      else rows = await st.dequeue(c, queues, queues.map((q) => groups.get(q)!.length), node);
    } catch (e) {
      deps.failed(tx, e); // fails the batch first, then its takes (with the batch's reason)
      for (const t of list) t.fail(tx.failed ?? reason(e));
      throw e;
    }
    if (mode !== "peek") tx.unanswered--;
    if (mode === "dequeue") tx.taken.push(...(rows as Required<Row>[]));
    else if (mode === "open") tx.leased.push(...rows.map((r) => r.id));
    if (tx.undone) {
      for (const t of list) t.fail(tx.failed ?? new StoreError("Postgres: batch undone"));
      return;
    }
    const got = by(rows.sort((a, b) => a.id - b.id), (r) => r.queue);
    for (const [queue, waiting] of groups) {
      const found = got.get(queue) ?? [];
      waiting.forEach((t, i) => {
        const r = mode === "peek" ? found[0] : found[i];
        if (r === undefined) return t.ok(null);
        const m: Message = { id: r.id, flags: r.flags, expires: r.expires, body: r.body };
        if (mode === "dequeue") change(tx, queue, { items: -1, bytes: -r.body.length, fetched: 1 });
        if (mode === "open") {
          change(tx, queue, { open: 1 });
          hold(tx, r.id, { queue, bytes: r.body.length, deliveries: r.deliveries });
        }
        t.ok(m);
      });
    }
  }

  return { send };
}
