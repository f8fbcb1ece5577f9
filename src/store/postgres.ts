/**
 * The QueueStore on Postgres (`--store postgres://…`): many mcq nodes on one database, none of
 * them holding queue state that another could not serve.
 *
 * Group commit: a batch is one Postgres transaction. Its operations are kept in order and sent
 * in groups of like ones (postgres-sql.ts): every set of the batch is one multi-row INSERT, every
 * plain get one `DELETE … FOR UPDATE SKIP LOCKED … RETURNING`, and so on; the counters this node
 * changed are one upsert of its own rows, then COMMIT. STORED leaves only after COMMIT succeeded.
 * Takes are sent as soon as they are asked for (a microtask later, so a turn's takes go
 * together), and answer before the commit; the get's reply then waits for the next batch, which
 * commits after this one.
 *
 * One connection carries every batch, in order: a batch's BEGIN is sent only once the previous
 * one's COMMIT was, so the node sees its own writes in order and a get never misses a message
 * this node stored before it. While one batch commits, the next runs its requests (two batches
 * in flight, turn.ts) and queues its statements behind. No transaction stays open across turns.
 *
 * Failure: any statement that fails, and any batch that takes longer than `timeoutMs`, fails the
 * batch (StoreError "Postgres: <reason>", which clients see as SERVER_ERROR) and every later one,
 * and the connection is replaced: the next batch walks the host list again (postgres-hosts.ts),
 * so a node finds the new primary after a failover without a restart.
 *
 * Counters (postgres-view.ts): summed over nodes when read; this node's own changes count at once.
 * Nodes (postgres-nodes.ts): heartbeats, and the open messages of dead nodes returned.
 */
import { SQL } from "bun";
import { connectPrimary, parseStoreUrl, type StoreUrl } from "./postgres-hosts";
import { claimHome } from "./postgres-home";
import { migrate } from "./postgres-schema";
import { statements, zero, type Delta, type Statements } from "./postgres-sql";
import { createListener } from "./postgres-listen";
import { createSender, type Mode, type Op, type Tx } from "./postgres-send";
import { createView } from "./postgres-view";
import { StoreError, type Message, type QueueStore } from "./store";

export interface PostgresOptions {
  /** A node silent this long (s) is dead: others return its open messages. */
  leaseS: number;
  /** A batch not committed within this many ms fails (SERVER_ERROR), and the connection is replaced. */
  timeoutMs: number;
  log: (level: "info" | "warn", message: string) => void;
  /** The data directory naming this node (postgres-home.ts), or null. */
  home: string | null;
}

export interface PostgresStore extends QueueStore {
  /** Called when messages may be available in `queue` (null: in any), from any node. */
  onAvailable: ((queue: string | null) => void) | null;
  /** Reads every node's counters again; resolves once the view holds them. */
  refresh(): Promise<void>;
  /** The URL without its password, and the host in use. */
  describe(): string;
  /** This node's id in mcq_nodes. */
  readonly node: number;
}

/** How often (ms) an idle node reads every node's counters again. */
const REFRESH_MS = 1000;

const reason = (e: unknown) =>
  e instanceof StoreError ? e : new StoreError(`Postgres: ${(e instanceof Error ? e.message : String(e)).replace(/\s+/g, " ")}`, { cause: e });

export async function openPostgresStore(urlText: string, options: PostgresOptions): Promise<PostgresStore> {
  const url: StoreUrl = parseStoreUrl(urlText);
  const st: Statements = statements(url.schema);
  const channel = `mcq_${url.schema}`;
  let { sql, host, url: hostUrl } = await connectPrimary(url);
  let client: SQL | null = sql;
  await migrate(sql, url.schema);
  const claim = options.home === null ? null : claimHome(options.home);
  const node = await st.register(sql);
  if (claim?.previous != null) {
    // This directory's last server is gone (killed): its open messages go back now.
    const back = await st.reap(sql, options.leaseS, claim.previous);
    if (back > 0) options.log("info", `Postgres: ${back} open messages of this directory's previous node returned`);
  }
  claim?.write(node);
  const view = createView();
  /** Open messages this node holds: id → queue and size. */
  const held = new Map<number, { queue: string; bytes: number }>();
  let lastSums = await st.totals(sql);
  /** Batches since the last refresh read the sums: a refresh replays their changes. */
  let recent: Tx[] = [];
  view.reset(lastSums, []);

  /** The connection's sequence: the next transaction starts once this resolves. */
  let gate: Promise<void> = Promise.resolve();
  let lastOutcome: Promise<void> = Promise.resolve();
  let cur = newTx();
  let commitFailed = false;
  let lastBeat = Date.now();
  let lastRefresh = Date.now();
  let quiet = false;
  let closed = false;

  function newTx(): Tx {
    let handedOff!: () => void;
    const handOff = new Promise<void>((r) => (handedOff = r));
    let breakNow!: (e: StoreError) => void;
    const broken = new Promise<never>((_, fail) => (breakNow = fail));
    broken.catch(() => {});
    const tx: Tx = {
      ops: [], chain: null, failed: null, undone: false, wake: new Set(), dropped: new Set(), deltas: new Map(),
      handOff, handedOff, outcome: Promise.resolve(), timer: null, flushing: false, refreshers: [], asked: [], heldUndo: [], broken, breakNow,
    };
    recent.push(tx);
    return tx;
  }

  /** The connection, walking the host list again if the last one was dropped. */
  async function connection(): Promise<SQL> {
    if (client !== null) return client;
    const found = await connectPrimary(url);
    client = found.sql;
    if (found.host !== host) options.log("warn", `Postgres: now using ${found.host} (was ${host})`);
    host = found.host;
    hostUrl = found.url;
    listener.restart();
    store.onAvailable?.(null); // a notification may have been missed meanwhile
    return client;
  }

  /**
   * Drops the connection after a failure: whatever it was doing is abandoned. The LISTEN
   * connection goes too, until the next connection succeeds: in Bun 1.4.5 a LISTEN retrying
   * against a Postgres that is down keeps every new connection of the process from succeeding,
   * even once Postgres is back (measured; tests/e2e/postgres-outage.test.ts).
   */
  function replaceConnection(): void {
    const old = client;
    client = null;
    listener.pause();
    if (old !== null) void old.close({ timeout: 0 }).catch(() => {});
  }

  const { send } = createSender({ st, node, view, change: (...a) => change(...a), hold: (...a) => hold(...a), reason });

  /** Changes what this node holds open, undone with the batch. */
  function hold(tx: Tx, id: number, h: { queue: string; bytes: number } | null): void {
    const before = held.get(id);
    if (h === null) held.delete(id);
    else held.set(id, h);
    tx.heldUndo.push(() => (before === undefined ? held.delete(id) : held.set(id, before)));
  }

  function change(tx: Tx, queue: string, d: Partial<Delta>, created = 0): void {
    const full = { ...zero(), ...d };
    view.add(queue, full, created);
    let sum = tx.deltas.get(queue);
    if (sum === undefined) tx.deltas.set(queue, (sum = zero()));
    for (const k of Object.keys(full) as (keyof Delta)[]) sum[k] += full[k];
  }

  /** Sends the batch's ops not yet sent, after what it sent before (and BEGIN, the first time). */
  function flush(tx: Tx): void {
    tx.flushing = false;
    if (tx.ops.length === 0 || tx.undone) return;
    const ops = tx.ops;
    tx.ops = [];
    for (const o of ops) if (o.k === "take") tx.asked.push(o.t); // failed with the batch, from here on
    const first = tx.chain === null;
    if (first) startTimer(tx);
    const sendAfter = async (begin: boolean) => {
      if (tx.failed !== null) throw tx.failed;
      const c = begin ? await connection() : client;
      if (c === null) throw new StoreError("Postgres: connection lost");
      // BEGIN goes in the same round trip as the statements: a failed BEGIN fails them too.
      const started = begin ? c.unsafe("BEGIN").execute() : Promise.resolve();
      const results = await Promise.allSettled([started, send(tx, c, ops)]);
      for (const r of results) if (r.status === "rejected") throw r.reason;
    };
    tx.chain = first ? gate.then(() => sendAfter(true)) : tx.chain!.then(() => sendAfter(false));
    tx.chain.catch((e) => failTx(tx, e));
  }

  /** A batch must be done within the timeout: a Postgres that stopped answering is not waited for. */
  function startTimer(tx: Tx): void {
    tx.timer = setTimeout(() => {
      failTx(tx, new StoreError(`Postgres: no answer within ${options.timeoutMs} ms`));
      replaceConnection();
      tx.handedOff();
    }, options.timeoutMs);
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
    return new Promise<Message | null>((ok, fail) => {
      if (!tx.flushing) {
        tx.flushing = true;
        // After every socket event of this loop iteration: one flush carries them all.
        setImmediate(() => flush(tx));
      }
      tx.ops.push({ k: "take", t: { mode, queue, now, ok, fail } });
    });
  }

  function op(o: Op): void {
    if (closed) throw new StoreError("Postgres: store closed");
    cur.ops.push(o);
  }

  /** Runs `fn` between batches, in the connection's order; a failure drops the connection. */
  function background(fn: (c: SQL) => Promise<void>): void {
    const run = gate.then(async () => fn(await connection()));
    gate = run.then(
      () => {},
      (e) => {
        options.log("warn", `Postgres: ${reason(e).message}`);
        replaceConnection();
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
    const after = gate.then(async () => st.totals(await connection()));
    gate = after.then(() => {}, () => {});
    applySums(await after, before);
  }

  /** The view becomes `rows` plus the changes of `first` and every batch after it. */
  function applySums(rows: Awaited<ReturnType<Statements["totals"]>>, first: Tx): void {
    lastSums = rows;
    recent = recent.slice(Math.max(0, recent.indexOf(first)));
    view.reset(lastSums, recent.filter((t) => !t.undone));
  }

  const listener = createListener(channel, () => hostUrl, (queue) => store.onAvailable?.(queue), options.log);

  const store: PostgresStore = {
    node,
    onAvailable: null,
    maxInFlight: Number(process.env.MCQ_PG_IN_FLIGHT ?? 1),
    describe: () => `${url.safe} (writing to ${host}, node ${node})`,
    refresh,

    enqueue(queue, flags, body, expiresAt, now) {
      op({ k: "insert", queue, flags, created: now, expires: expiresAt, body: Buffer.from(body) });
      change(cur, queue, { total: 1, items: 1, bytes: body.length }, now);
      cur.wake.add(queue);
      return 0; // Postgres numbers it when the batch is sent: FIFO is the order of insertion
    },
    dequeue: (queue, now) => take("dequeue", queue, now),
    peek: (queue, now) => take("peek", queue, now),
    open: (queue, now) => take("open", queue, now),
    confirm(queue, id) {
      const h = held.get(id);
      if (h === undefined || h.queue !== queue) return false;
      hold(cur, id, null);
      op({ k: "confirm", queue, id, bytes: h.bytes });
      change(cur, queue, { items: -1, bytes: -h.bytes, open: -1, fetched: 1 });
      return true;
    },
    release(queue, id) {
      const h = held.get(id);
      if (h === undefined || h.queue !== queue) return false;
      hold(cur, id, null);
      op({ k: "release", queue, id, bytes: h.bytes });
      change(cur, queue, { open: -1 });
      cur.wake.add(queue);
      return true;
    },
    restore(queue, m, now) {
      const fresh = !view.has(queue);
      op({ k: "restore", queue, m: { ...m, body: Buffer.from(m.body) }, created: now });
      change(cur, queue, fresh ? { total: 1, fetched: 1, items: 1, bytes: m.body.length } : { items: 1, bytes: m.body.length }, now);
      change(cur, queue, { fetched: -1 });
      cur.wake.add(queue);
    },
    drop(queue) {
      const existed = view.drop(queue);
      op({ k: "drop", queue });
      cur.deltas.delete(queue); // its rows are deleted: only what follows the drop counts
      cur.dropped.add(queue);
      for (const [id, h] of held) if (h.queue === queue) hold(cur, id, null);
      return existed;
    },
    flush(queue) {
      const q = view.get(queue);
      if (q === undefined) return;
      op({ k: "flush", queue });
      change(cur, queue, { items: -q.items, bytes: -q.bytes, open: -q.open });
      for (const [id, h] of held) if (h.queue === queue) hold(cur, id, null);
    },
    flushAll() {
      op({ k: "flush", queue: null });
      for (const { name } of view.list()) {
        const q = view.get(name)!;
        change(cur, name, { items: -q.items, bytes: -q.bytes, open: -q.open });
      }
      for (const id of [...held.keys()]) hold(cur, id, null);
    },
    list: () => view.list(),
    has: (queue) => view.has(queue),
    size: (queue) => view.get(queue) ?? null,
    summaries: () => view.summaries(),
    detail: (queue, now) => view.detail(queue, now),
    totals: () => view.totals(),
    sweepExpired(now, limit) {
      op({ k: "sweep", now, limit });
      return 0; // counted when Postgres answers
    },

    commit() {
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
      const done = Promise.race([
        tx.broken,
        tx.chain.then(async () => {
          await previous; // a batch is durable only after every earlier one
          if (tx.failed !== null) throw tx.failed;
          const c = client;
          if (c === null) throw new StoreError("Postgres: connection lost");
          const parts: Promise<unknown>[] = [];
          if (tx.deltas.size > 0) parts.push(st.count(c, node, tx.deltas));
          if (tx.wake.size > 0) parts.push(st.notify(c, channel, [...tx.wake]));
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
            replaceConnection(); // its transaction is aborted or its state unknown: start afresh
            tx.handedOff();
            throw tx.failed;
          },
        );
      lastOutcome = done; // the next batch fails if this one does
      return done;
    },

    rollback() {
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
            if (client !== null) await client.unsafe("ROLLBACK").execute().catch(replaceConnection);
          })
          .finally(() => {
            if (open.timer !== null) clearTimeout(open.timer);
            open.handedOff();
          });
      }
      cur = newTx();
      // Batches from here on do not inherit the failure: those it concerned are undone.
      lastOutcome = Promise.resolve();
      view.reset(lastSums, recent.filter((t) => !t.undone));
    },
    dirty: () => cur.ops.length > 0 || cur.chain !== null || cur.deltas.size > 0 || cur.dropped.size > 0,
    writable: () => !commitFailed && !closed,
    maintain() {
      if (closed || cur.chain !== null) return;
      const now = Date.now();
      if (now - lastBeat >= (options.leaseS * 1000) / 3) {
        lastBeat = now;
        background(async (c) => {
          await st.heartbeat(c, node);
          const back = await st.reap(c, options.leaseS);
          if (back > 0) {
            options.log("info", `Postgres: ${back} open messages of dead nodes returned to their queues`);
            store.onAvailable?.(null);
          }
        });
      }
      if (now - lastRefresh >= REFRESH_MS) {
        lastRefresh = now;
        // Said once per outage, not every second.
        void refresh().then(
          () => (quiet = false),
          (e) => {
            if (!quiet) options.log("warn", `Postgres: reading counters: ${reason(e).message}`);
            quiet = true;
          },
        );
      }
    },
    async close() {
      closed = true;
      await lastOutcome.catch(() => {}); // the last batch is committed (or failed) first
      await gate;
      const c = client;
      await listener.stop();
      if (c === null) return;
      await st.leave(c, node).catch(() => {});
      claim?.release();
      await c.close({ timeout: 1 }).catch(() => {});
    },
  };
  listener.start();
  return store;
}
