/**
 * The QueueStore on Postgres (`--store postgres://…`): many mcq nodes on one database, none of
 * them holding queue state that another could not serve.
 *
 * Group commit: a batch (one event-loop turn's operations, turn.ts) is one Postgres transaction,
 * sent whole when the turn commits (postgres-batches.ts): BEGIN, its operations with like ones
 * together (postgres-send.ts: every set one multi-row INSERT, every plain get one `DELETE … FOR
 * UPDATE SKIP LOCKED … RETURNING` that also counts what it took), the upsert of this node's
 * counter rows, NOTIFY and COMMIT, pipelined in one write. No transaction stays open across
 * turns, nor while mcq waits for anything: Postgres holds it only while it runs those statements.
 * STORED leaves only after COMMIT succeeded. A take is answered when its statement is, before
 * the COMMIT's answer; the get's reply depends on that batch (batch.within) and leaves once it is
 * durable, while the connection runs on into the next batch.
 *
 * One connection carries every batch, in order, so the node sees its own writes in order and a
 * get never misses a message this node stored before it. One batch is in flight on it at a time
 * (IN_FLIGHT): the next is sent once the last one's outcome is known.
 *
 * Failure: any statement that fails, and any batch that takes longer than `timeoutMs`, fails the
 * batch (StoreError "Postgres: <reason>", which clients see as SERVER_ERROR) and every later one,
 * and the connection is replaced: the next batch walks the host list again (postgres-hosts.ts),
 * so a node finds the new primary after a failover without a restart.
 *
 * Counters (postgres-view.ts): summed over nodes when read; this node's own changes count at once.
 * Nodes (postgres-sql.ts register, heartbeat, reap): heartbeats, and the open messages of dead
 * nodes returned.
 */
import { SQL } from "bun";
import { connectChecked, connectPrimary, identityReader, newWalk, parseStoreUrl, type StoreUrl } from "./postgres-hosts";
import { claimHome, createWitness, reclaim } from "./postgres-home";
import { createLease } from "./postgres-lease";
import { migrate } from "./postgres-schema";
import { statements, zero, type Delta, type Statements } from "./postgres-sql";
import { createListener } from "./postgres-listen";
import { commitBound, createBatches } from "./postgres-batches";
import { createSender, type Tx } from "./postgres-send";
import { createView } from "./postgres-view";
import { createUnknown } from "./postgres-unknown";
import { storeHere } from "./postgres-unknown-file";
import { createFeatures, type DeadLetterPolicy } from "./postgres-features";
import { createReindexer } from "./postgres-reindex";
import { createEmptying } from "./postgres-empty";
import { createHostWatch } from "./postgres-watch";
import { StoreError, type QueueStore } from "./store";
import { within } from "../within";

export interface PostgresOptions {
  /** A node silent this long (s) is dead: others return its open messages. */
  leaseS: number;
  /** A batch not committed within this many ms fails (SERVER_ERROR), and the connection is replaced. */
  timeoutMs: number;
  log: (level: "info" | "warn" | "debug" | "error", message: string) => void;
  /** Seconds between this node's checks of the index sizes (postgres-reindex.ts); 0: never. Default 60. */
  reindexS?: number;
  /** The data directory naming this node (postgres-home.ts), or null. */
  home: string | null;
  /** With dead letters configured: where a message of a dead node goes, opened that often (postgres-features.ts). */
  deadLetter?: DeadLetterPolicy | null;
}

export interface PostgresStore extends QueueStore {
  /** Called when messages may be available in `queue` (null: in any), from any node. */
  onAvailable: ((queue: string | null) => void) | null;
  onLost: ((ids: Set<number>) => void) | null;
  /** Reads every node's counters again; resolves once the view holds them. */
  refresh(): Promise<void>;
  /** The URL without its password, and the host in use. */
  describe(): string;
  /** This node's id in mcq_nodes. */
  readonly node: number;
}

/** How often (ms) an idle node reads every node's counters again. */
const REFRESH_MS = 1000;
/**
 * Batches in flight at once (turn.ts waits beyond that): one. It is fastest here
 * (docs/performance.md): Postgres runs one connection's transactions one after the other, each
 * COMMIT its own fsync, so a second batch in flight only splits the connections that wait on gets
 * into two smaller batches. It is also what keeps a batch from going on a new connection while
 * the one before it is still in flight on the old one (failed with it, though it committed: review
 * 10b R2), so it is no setting (MCQ_PG_IN_FLIGHT was one, undocumented, and is gone).
 */
const IN_FLIGHT = 1;

const reason = (e: unknown) =>
  e instanceof StoreError ? e : new StoreError(`Postgres: ${(e instanceof Error ? e.message : String(e)).replace(/\s+/g, " ")}`, { cause: e });

export async function openPostgresStore(urlText: string, options: PostgresOptions): Promise<PostgresStore> {
  const url: StoreUrl = parseStoreUrl(urlText);
  const st: Statements = statements(url.schema);
  const channel = `mcq_${url.schema}`;
  // A server that never lets its identity be read is said once (at open); a passing failure fails the connection.
  const identity = identityReader(st, options.log);
  // The newest timeline written to (postgres-hosts.ts). A connection that closed is replaced: the
  // next use walks again (review 10a M3), and a closed one is never made the connection.
  const dead = new WeakSet<SQL>();
  let opened = false;
  const walk = newWalk((line) => options.log("error", line), (c) => {
    dead.add(c);
    if (opened) replaceConnection(c);
  });
  let { sql, host, url: hostUrl, server, database } = await connectChecked(url, identity, walk, options.timeoutMs);
  let client: SQL | null = sql;
  const storeId = await migrate(sql, url.schema, options.timeoutMs);
  const claim = options.home === null ? null : claimHome(options.home);
  const node = await st.register(sql, options.leaseS);
  const view = createView();
  /** Open messages this node holds: id → queue, size and how often it was opened. */
  const held = new Map<number, { queue: string; bytes: number; deliveries?: number }>();
  const features = createFeatures({
    schema: url.schema, channel, node, st, view, held, log: options.log, deadLetter: options.deadLetter ?? null,
    tx: () => tx(), op: (o) => op(o), change: (...a) => change(...a), hold: (...a) => hold(...a),
    background: (fn) => batches.background(fn), closed: () => closed,
  });
  if (claim !== null) await reclaim(claim, node, (previous) => features.reap(sql, options.leaseS, previous), options.log);
  const sums = await st.totals(sql);
  view.reset(sums, []);
  const witness = createWitness(options.leaseS);
  // Heartbeats and reaping (postgres-lease.ts), run by maintain() between batches.
  const lease = createLease({
    st, node, leaseS: options.leaseS, witness, reap: features.reap, background: (fn) => batches.background(fn), lost: (freed) => lost(freed),
    returned(n) {
      options.log("info", `Postgres: ${n} open messages of dead nodes returned to their queues`);
      store.onAvailable?.(null);
    },
  });
  let lastRefresh = Date.now();
  let quiet = false;
  let closed = false;
  /** How many times the heartbeat found this node reaped (lost()). */
  let losses = 0;

  /** The connection, walking the host list again if the last one was dropped. */
  async function connection(): Promise<SQL> {
    if (client !== null) return client;
    const found = await connectPrimary(url, walk, options.timeoutMs);
    // Its identity not to be read now: not connected (the batch fails; the next one connects again).
    const late = () => new StoreError(`Postgres: ${found.host}: no answer within ${options.timeoutMs} ms`);
    server = await within(identity(found.sql), options.timeoutMs, late)
      .then((s) => (dead.has(found.sql) ? Promise.reject(new StoreError(`Postgres: ${found.host}: the connection closed as it was made`)) : s))
      .catch((e) => found.sql.close({ timeout: 0 }).catch(() => {}).then(() => Promise.reject(e)));
    client = found.sql;
    witness.connected();
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
   * even once Postgres is back (measured; tests/e2e/postgres-outage.test.ts). `closeAfter`: the
   * old one is closed once that settles (postgres-batches.ts endUnanswered); new batches go on a
   * new one at once.
   */
  function replaceConnection(only: SQL | null = null, closeAfter: Promise<unknown> = Promise.resolve()): void {
    if (only !== null && client !== only) return; // replaced already
    const old = client;
    client = null;
    listener.pause();
    if (old !== null) void closeAfter.catch(() => {}).then(() => old.close({ timeout: 0 })).catch(() => {});
  }

  const { send } = createSender({
    st, node, view, change: (...a) => change(...a), hold: (...a) => hold(...a), reason, feature: (...a) => features.statement(...a),
    failed: (...a) => batches.failed(...a),
  });

  /**
   * Changes what this node holds open, undone with the batch, unless lost() ran meanwhile: the
   * reaper freed what `held` had, so an undo must not give the node back a message another
   * consumer may hold now (nor drop one a later take holds).
   */
  function hold(tx: Tx, id: number, h: { queue: string; bytes: number; deliveries?: number } | null): void {
    const before = held.get(id);
    const at = losses;
    if (h === null) held.delete(id);
    else held.set(id, h);
    tx.heldUndo.push(() => at === losses && (before === undefined ? held.delete(id) : held.set(id, before)));
  }

  /**
   * Counts a change in the view and in the batch. `counted`: the batch's statement counts it in
   * Postgres itself (confirm, release: only what they find), so the batch's upsert leaves it out.
   */
  function change(tx: Tx, queue: string, d: Partial<Delta>, created = 0, counted = false): void {
    const full = { ...zero(), ...d };
    view.add(queue, full, created);
    for (const into of counted ? [tx.deltas, tx.counted] : [tx.deltas]) {
      let sum = into.get(queue);
      if (sum === undefined) into.set(queue, (sum = zero()));
      for (const k of Object.keys(full) as (keyof Delta)[]) sum[k] += full[k];
    }
  }

  const side = () => new SQL(hostUrl, { max: 1, connectionTimeout: 3, idleTimeout: 0, onclose: () => {} });
  const unknown = createUnknown({
    st, node, timeoutMs: options.timeoutMs, side, identity, reason, log: options.log, home: options.home, here: storeHere(server, database, url, storeId),
    gaveBack: async (queues) => {
      for (const q of queues) store.onAvailable?.(q);
      await refresh().catch(() => {}); // read again within the second anyway
    },
  });
  let lastAsked = 0;
  const batches = createBatches({
    st, node, channel, view, timeoutMs: options.timeoutMs, send, actor: () => store.actor ?? 0, connection, client: () => client, replaceConnection, reason,
    side, server: () => server, unresolved: (t) => unknown.keep(t),
    log: options.log, closed: () => closed, sums,
  });
  const { take, op, refresh } = batches;
  /** The open batch: what the verbs change goes into it. */
  const tx = () => batches.current();

  const reindexer = createReindexer({
    schema: url.schema, intervalS: options.reindexS ?? 60, log: options.log,
    connect: () => new SQL(hostUrl, { max: 1, connectionTimeout: 3, idleTimeout: 0, onclose: () => {} }),
  });

  const emptying = createEmptying({ view, held, tx, op, change, hold });

  // A promotion beside a running old primary (review 10a M4): the batches in flight end on the old
  // connection, which closes once they have settled; new ones walk to the newest timeline.
  const watch = createHostWatch({
    url, walk, periodMs: (options.leaseS * 1000) / 3, boundMs: options.timeoutMs, host: () => host, connection: () => client, log: options.log,
    moveOn: () => !closed && client !== null && replaceConnection(client, batches.settled()),
  });

  const listener = createListener(channel, () => hostUrl, (queue) => (queue !== null && features.notice(queue)) || store.onAvailable?.(queue), options.log);

  /**
   * The heartbeat found this node's row gone: another node reaped it and returned what it held
   * open, and may have handed those messages to other consumers. So everything this node held is
   * lost (the heartbeat returned the rest): its sessions forget those opens (store.onLost), and a
   * later close of one answers as after an expired lease, never confirming a message another
   * consumer may hold. Everything `held` has here was opened before the heartbeat ran: answers
   * come back in the connection's order.
   */
  function lost(freed: number): void {
    const ids = new Set(held.keys());
    held.clear();
    losses++;
    options.log("warn", `Postgres: node ${node} had been reaped by another node (no heartbeat for --node-timeout ${options.leaseS} s): ` +
      `its row is back; the ${ids.size} messages it held open went back to their queues (${freed} of them now), and closing them answers as after an expired lease`);
    store.onLost?.(ids);
    store.onAvailable?.(null);
  }

  const store: PostgresStore = {
    node,
    onAvailable: null,
    onLost: null,
    maxInFlight: IN_FLIGHT,
    answersAtCommit: true,
    actor: 0,
    describe: () => `${url.safe} (writing to ${host}, node ${node})`,
    refresh,
    losses: () => losses,
    holds: (queue, id) => held.get(id)?.queue === queue,

    enqueue(queue, flags, body, expiresAt, now) {
      if (features.enqueue(queue, flags, body, expiresAt, now)) return 0; // a fanout copy of a set with a token
      op({ k: "insert", queue, flags, created: now, expires: expiresAt, body: Buffer.from(body) });
      change(tx(), queue, { total: 1, items: 1, bytes: body.length }, now);
      tx().wake.add(queue);
      return 0; // Postgres numbers it when the batch is sent: FIFO is the order of insertion
    },
    dequeue: (queue, now) => take("dequeue", queue, now),
    peek: (queue, now) => take("peek", queue, now),
    open: (queue, now) => take("open", queue, now),
    confirm(queue, id) {
      const h = held.get(id);
      if (h === undefined || h.queue !== queue) return false;
      hold(tx(), id, null);
      op({ k: "confirm", queue, id, bytes: h.bytes });
      change(tx(), queue, { items: -1, bytes: -h.bytes, open: -1, fetched: 1 }, 0, true);
      return true;
    },
    release(queue, id) {
      const h = held.get(id);
      if (h === undefined || h.queue !== queue) return false;
      hold(tx(), id, null);
      op({ k: "release", queue, id, bytes: h.bytes });
      change(tx(), queue, { open: -1 }, 0, true);
      tx().wake.add(queue);
      return true;
    },
    restore(queue, m, now) {
      const fresh = !view.has(queue);
      op({ k: "restore", queue, m: { ...m, body: Buffer.from(m.body) }, created: now });
      change(tx(), queue, fresh ? { total: 1, fetched: 1, items: 1, bytes: m.body.length } : { items: 1, bytes: m.body.length }, now);
      change(tx(), queue, { fetched: -1 });
      tx().wake.add(queue);
    },
    drop: (queue) => emptying.drop(queue),
    flush: (queue) => emptying.flush(queue),
    flushAll: () => emptying.flushAll(),
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

    commit: () => batches.commit(),
    commitBoundMs: commitBound(options.timeoutMs),
    rollback: () => batches.rollback(),
    dirty: () => batches.dirty(),
    writable: () => !batches.failing() && !closed,
    maintain() {
      if (closed) return;
      const now = Date.now();
      reindexer.tick(now); // on a connection of its own: not held back by a batch
      watch.tick(now); // the same
      if (batches.dirty()) return;
      lease.tick(now);
      if (unknown.pending() > 0 && now - lastAsked >= REFRESH_MS) {
        lastAsked = now; // batches of unknown outcome: asked about again until Postgres answers
        void unknown.ask();
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
    delays: features.delays,
    dedup: features.dedup,
    deadLetters: features.deadLetters,
    discardOld: features.discardOld,
    countFeature(queue, counter) {
      // The counters the server decides; the statements that know the others count them.
      if ((counter !== "deadLetterSkipped" && counter !== "fanoutRefused") || !view.has(queue)) return;
      if (tx().ops.length === 0) op({ k: "feature", f: { k: "counted" } });
      change(tx(), queue, { [counter]: 1 });
    },
    /**
     * A clean stop leaves: this node's row goes and what it still holds open goes back (st.leave).
     * Bounded by the store's timeout, as a batch is: a Postgres that stopped answering (frozen, a
     * partition) must not keep the process from exiting. A node that could not leave throws
     * (main.ts: exit 1); its row stays, so another node reaps it after --node-timeout, or the
     * next start on this -H at once (the claim is kept for that).
     */
    async close() {
      closed = true;
      features.stop();
      reindexer.stop(); // not waited for: Postgres ends the statement once its connection is gone
      // Batches of unknown outcome: asked once more within the timeout (with the leave's, within commitBoundMs).
      await unknown.askLast(options.timeoutMs, batches.settled());
      let timer: ReturnType<typeof setTimeout> | undefined;
      let gaveUp = false;
      const late = new Promise<never>((_, fail) => {
        timer = setTimeout(() => fail(new StoreError(`Postgres: no answer within ${options.timeoutMs} ms`)), options.timeoutMs);
      });
      const leave = async () => {
        await batches.settled(); // the last batch is committed (or failed) first
        await listener.stop();
        // A connection dropped after a failure is made again to leave (not connection(): no LISTEN).
        const c = client ?? (client = (await connectPrimary(url, walk, options.timeoutMs)).sql);
        if (gaveUp) throw new StoreError("Postgres: gave up"); // made after the timeout: closed below
        await st.leave(c, node);
      };
      const left = leave();
      try {
        await Promise.race([left, late]);
      } catch (e) {
        gaveUp = true;
        listener.pause();
        replaceConnection();
        left.catch(() => {}).finally(() => replaceConnection()); // a connection made too late goes too
        throw new StoreError(
          `Postgres: node ${node} could not leave cleanly (${reason(e).message}): its open messages return to their queues ` +
            `when another node reaps it (--node-timeout ${options.leaseS} s), or at once when mcq starts again on this data directory`,
        );
      } finally {
        clearTimeout(timer);
        unknown.sayLeft();
      }
      claim?.release();
      const c = client;
      client = null;
      await c?.close({ timeout: 1 }).catch(() => {});
    },
  };
  opened = true;
  // Closed while opening: walk again; LISTEN starts with the next connection, not on a host that
  // may be down (review 11b F4: a LISTEN retrying against a down server blocks new connections).
  if (dead.has(sql)) replaceConnection(sql);
  else listener.start();
  features.recheck(); // delayed messages already waiting: the timer for the first due
  return store;
}
