/**
 * The numbers behind --http: one snapshot, shown as Prometheus text (/metrics) and as JSON
 * (/stats.json), so the two never disagree. Pure apart from reading the data directory's size.
 *
 * Per-queue numbers cover the --metrics-queues deepest queues (ties by name); the other queues
 * are summed into one entry, so a scrape stays small with 100,000 queues, and the listed series
 * plus the sum add up to the whole. The snapshot and its text are built in slices across
 * event-loop turns (slices.ts): a scrape over 50,000 queues used to stall every client for 0.6 s.
 */
import { readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import type { Context } from "./context";
import { slicedText, turnClock, type TurnClock } from "./slices";
import { COMMIT_BUCKETS } from "./stats";
import type { QueueSummary } from "./store/store";

export interface QueueMetrics {
  name: string;
  depth: number;
  bytes: number;
  total: number;
  fetched: number;
  open: number;
  /** Messages stored but not yet due (0 on a store without delays). */
  delayed: number;
  /** Messages moved to the dead-letter queue (max_deliveries), as `stats queue` counts them. */
  deadLettered: number;
  oldestAgeSeconds: number;
  waiters: number;
}

/** The queues not listed, summed (their oldest age is not kept: it would cost a lookup each). */
export type OtherQueues = Omit<QueueMetrics, "name" | "oldestAgeSeconds"> & { count: number };

export interface Snapshot {
  version: string;
  /** When the snapshot was taken (ms since the epoch): a reader's rates divide by its steps. */
  time: number;
  uptimeSeconds: number;
  connections: number;
  connectionsTotal: number;
  connectionsRejected: number;
  getCommands: number;
  setCommands: number;
  getHits: number;
  getMisses: number;
  bytesRead: number;
  bytesWritten: number;
  commitBatches: number;
  commitSeconds: { buckets: [le: number, count: number][]; sum: number; count: number };
  storeErrors: number;
  expired: number;
  dataDirBytes: number;
  writable: boolean;
  queueCount: number;
  /** The deepest queues, deepest first, at most --metrics-queues of them. */
  queues: QueueMetrics[];
  otherQueues: OtherQueues;
}

export async function snapshot(ctx: Context, clock = turnClock()): Promise<Snapshot> {
  const { stats, store } = ctx;
  const now = ctx.now();
  const { queues, otherQueues } = await queueMetrics(ctx, now, clock);
  let cumulative = 0;
  const buckets = COMMIT_BUCKETS.map((le, i): [number, number] => [le, (cumulative += stats.commitBuckets[i]!)]);
  return {
    version: ctx.version,
    time: now,
    uptimeSeconds: Math.floor((now - ctx.startedAt) / 1000),
    connections: stats.currConnections,
    connectionsTotal: stats.totalConnections,
    connectionsRejected: stats.rejectedConnections,
    getCommands: stats.getCmds,
    setCommands: stats.setCmds,
    getHits: stats.getHits,
    getMisses: stats.getMisses,
    bytesRead: stats.bytesRead,
    bytesWritten: stats.bytesWritten,
    commitBatches: stats.commits,
    commitSeconds: { buckets, sum: stats.commitSeconds, count: stats.commits },
    storeErrors: stats.storeErrors,
    expired: store.totals().expired,
    dataDirBytes: dirSize(ctx.config.home),
    writable: store.writable(now),
    queueCount: queues.length + otherQueues.count,
    queues,
    otherQueues,
  };
}

/**
 * One pass over every queue's counters, from memory and in slices: the sums of all, and the
 * deepest in a heap. Only the queues listed cost a detail() (their oldest age). The sum of the
 * others is all minus the listed, from the same pass, so the two always add up.
 */
async function queueMetrics(ctx: Context, now: number, clock: TurnClock) {
  const top = deepest(ctx.config.metricsQueues);
  const other: OtherQueues = { count: 0, depth: 0, bytes: 0, total: 0, fetched: 0, open: 0, delayed: 0, deadLettered: 0, waiters: 0 };
  for (const q of ctx.store.summaries()) {
    other.count++;
    other.depth += q.items;
    other.bytes += q.bytes;
    other.total += q.total;
    other.fetched += q.fetched;
    other.open += q.open;
    other.delayed += q.delayed ?? 0;
    other.deadLettered += deadLettered(ctx, q);
    top.offer(q);
    if (clock.over()) await clock.next();
  }
  // Waiting gets are bounded by the connections, not the queues; a get may wait on a queue
  // that does not exist yet, which counts among the others.
  const waiters = ctx.waiters.byQueue();
  for (const n of waiters.values()) other.waiters += n;
  const queues: QueueMetrics[] = [];
  for (const q of top.sorted()) {
    const detail = ctx.store.detail(q.name, now); // null if dropped since: its counters stand
    const listed: QueueMetrics = {
      name: q.name,
      depth: q.items,
      bytes: q.bytes,
      total: q.total,
      fetched: q.fetched,
      open: q.open,
      delayed: q.delayed ?? 0,
      deadLettered: deadLettered(ctx, q),
      oldestAgeSeconds: (detail?.oldestAgeMs ?? 0) / 1000,
      waiters: waiters.get(q.name) ?? 0,
    };
    queues.push(listed);
    other.count--;
    for (const k of ["depth", "bytes", "total", "fetched", "open", "delayed", "deadLettered", "waiters"] as const) other[k] -= listed[k];
    if (clock.over()) await clock.next();
  }
  return { queues, otherQueues: other };
}

/** Kept by the store with the queue's counters, or counted by the server since the start. */
/** Kept by the store (SQLite: features; Postgres: summed over nodes), else counted by this server since its start. */
const deadLettered = (ctx: Context, q: QueueSummary) =>
  q.features?.deadLettered ?? q.deadLettered ?? ctx.limits?.counted(q.name).deadLettered ?? 0;

/** The `limit` deepest queues (ties: the first name), kept in a heap whose root is the least deep. */
function deepest(limit: number) {
  const heap: QueueSummary[] = [];
  /** Whether a ranks after b: less deep, or as deep with a later name. */
  const after = (a: QueueSummary, b: QueueSummary) => a.items < b.items || (a.items === b.items && a.name > b.name);
  const swap = (i: number, j: number) => ([heap[i], heap[j]] = [heap[j]!, heap[i]!]);
  function up(i: number): void {
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!after(heap[i]!, heap[parent]!)) return;
      swap(i, parent);
      i = parent;
    }
  }
  function down(i: number): void {
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let m = i;
      if (l < heap.length && after(heap[l]!, heap[m]!)) m = l;
      if (r < heap.length && after(heap[r]!, heap[m]!)) m = r;
      if (m === i) return;
      swap(i, m);
      i = m;
    }
  }
  return {
    offer(q: QueueSummary): void {
      if (heap.length < limit) {
        heap.push(q);
        up(heap.length - 1);
      } else if (limit > 0 && after(heap[0]!, q)) {
        heap[0] = q;
        down(0);
      }
    },
    /** Deepest first. */
    sorted: (): QueueSummary[] => heap.slice().sort((a, b) => (after(a, b) ? 1 : -1)),
  };
}

function dirSize(dir: string): number {
  try {
    return readdirSync(dir).reduce((n, f) => n + statSync(join(dir, f)).size, 0);
  } catch {
    return 0;
  }
}

/** Label values escape backslash, double quote and newline (exposition format). */
const label = (v: string) => v.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");

/**
 * The label of the series that sum the queues not listed. It holds a space, which no queue name
 * does (docs/protocol.md: printable ASCII, no spaces), so it can never clash with a real queue.
 */
export const OTHER_QUEUES = "(other queues)";

/** The snapshot in Prometheus text exposition format 0.0.4, built in slices. */
export function prometheus(s: Snapshot, clock?: TurnClock): Promise<ReadableStream<Uint8Array>> {
  return slicedText(async (line, slice) => {
    const metric = (name: string, type: string, help: string, samples: [string, number][]) => {
      line(`# HELP ${name} ${help}\n# TYPE ${name} ${type}\n`);
      for (const [labels, value] of samples) line(`${name}${labels} ${value}\n`);
    };
    const one = (name: string, type: string, help: string, value: number) => metric(name, type, help, [["", value]]);
    one("mcq_uptime_seconds", "gauge", "Seconds since the server started.", s.uptimeSeconds);
    one("mcq_connections", "gauge", "Open client connections.", s.connections);
    one("mcq_connections_total", "counter", "Client connections accepted.", s.connectionsTotal);
    one("mcq_connections_rejected_total", "counter", "Connections refused by -c.", s.connectionsRejected);
    metric("mcq_commands_total", "counter", "Commands by kind (a get counts each key).", [
      ['{command="get"}', s.getCommands],
      ['{command="set"}', s.setCommands],
    ]);
    one("mcq_get_hits_total", "counter", "Get keys that returned a message.", s.getHits);
    one("mcq_get_misses_total", "counter", "Get keys that found no message.", s.getMisses);
    one("mcq_read_bytes_total", "counter", "Bytes received from clients.", s.bytesRead);
    one("mcq_written_bytes_total", "counter", "Bytes sent to clients.", s.bytesWritten);
    one("mcq_commit_batches_total", "counter", "Store transactions committed (one per group-commit turn).", s.commitBatches);
    line("# HELP mcq_commit_seconds Time to commit a batch, fsync included.\n# TYPE mcq_commit_seconds histogram\n");
    for (const [le, count] of s.commitSeconds.buckets) line(`mcq_commit_seconds_bucket{le="${le}"} ${count}\n`);
    line(`mcq_commit_seconds_bucket{le="+Inf"} ${s.commitSeconds.count}\n`);
    line(`mcq_commit_seconds_sum ${s.commitSeconds.sum}\nmcq_commit_seconds_count ${s.commitSeconds.count}\n`);
    one("mcq_store_errors_total", "counter", "Store failures (each undid its batch).", s.storeErrors);
    one("mcq_expired_total", "counter", "Messages that expired unread (--expiry).", s.expired);
    one("mcq_data_dir_bytes", "gauge", "Size of the files in the data directory.", s.dataDirBytes);
    one("mcq_store_writable", "gauge", "1 if a new message can be stored now.", s.writable ? 1 : 0);
    one("mcq_queues", "gauge", "Queues.", s.queueCount);
    one("mcq_queues_other", "gauge", `Queues beyond --metrics-queues, summed in queue="${OTHER_QUEUES}".`, s.otherQueues.count);
    const other = `{queue="${OTHER_QUEUES}"}`;
    const perQueue = async (name: string, type: string, help: string, pick: (q: QueueMetrics | OtherQueues) => number) => {
      line(`# HELP ${name} ${help}\n# TYPE ${name} ${type}\n`);
      for (const q of s.queues) {
        line(`${name}{queue="${label(q.name)}"} ${pick(q)}\n`);
        await slice();
      }
      if (s.otherQueues.count > 0 || s.otherQueues.waiters > 0) line(`${name}${other} ${pick(s.otherQueues)}\n`);
    };
    // The sums of the others are counters only while the same queues stay beyond the limit: a
    // queue that moves into the list takes its share with it.
    await perQueue("mcq_queue_depth", "gauge", "Messages in the queue, open ones included.", (q) => q.depth);
    await perQueue("mcq_queue_bytes", "gauge", "Bytes of the messages in the queue.", (q) => q.bytes);
    await perQueue("mcq_queue_stored_total", "counter", "Messages ever stored in the queue.", (q) => q.total);
    await perQueue("mcq_queue_fetched_total", "counter", "Messages ever consumed from the queue.", (q) => q.fetched);
    await perQueue("mcq_queue_open", "gauge", "Messages reserved by a consumer (get /open).", (q) => q.open);
    line("# HELP mcq_queue_oldest_age_seconds Age of the oldest message (listed queues only).\n");
    line("# TYPE mcq_queue_oldest_age_seconds gauge\n");
    for (const q of s.queues) {
      line(`mcq_queue_oldest_age_seconds{queue="${label(q.name)}"} ${q.oldestAgeSeconds}\n`);
      await slice();
    }
    await perQueue("mcq_queue_delayed", "gauge", "Messages stored but not yet due (set /delay=, get /abort/delay=).", (q) => q.delayed);
    await perQueue("mcq_queue_dead_lettered_total", "counter", "Messages moved to the dead-letter queue.", (q) => q.deadLettered);
    await perQueue("mcq_queue_waiters", "gauge", "Blocking gets waiting on the queue.", (q) => q.waiters);
  }, clock);
}

/** The snapshot as JSON, built in slices like the text. */
export function json(s: Snapshot, clock?: TurnClock): Promise<ReadableStream<Uint8Array>> {
  return slicedText(async (line, slice) => {
    const { queues, ...rest } = s;
    line(`${JSON.stringify(rest).slice(0, -1)},"queues":[`);
    for (let i = 0; i < queues.length; i++) {
      line((i === 0 ? "" : ",") + JSON.stringify(queues[i]));
      await slice();
    }
    line("]}");
  }, clock);
}
