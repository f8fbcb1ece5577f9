/**
 * The numbers behind --http: one snapshot, shown as Prometheus text (/metrics) and as JSON
 * (/stats.json), so the two never disagree. Pure apart from reading the data directory's size.
 */
import { readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import type { Context } from "./context";
import { COMMIT_BUCKETS } from "./stats";

export interface QueueMetrics {
  name: string;
  depth: number;
  bytes: number;
  total: number;
  fetched: number;
  open: number;
  oldestAgeSeconds: number;
  waiters: number;
}

export interface Snapshot {
  version: string;
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
  queues: QueueMetrics[];
}

export function snapshot(ctx: Context): Snapshot {
  const { stats, store } = ctx;
  const now = ctx.now();
  const waiters = ctx.waiters.byQueue();
  const queues = store.list().map((q): QueueMetrics => {
    const d = store.detail(q.name, now)!;
    return {
      name: q.name,
      depth: d.items,
      bytes: d.bytes,
      total: d.total,
      fetched: d.fetched,
      open: d.open,
      oldestAgeSeconds: d.oldestAgeMs / 1000,
      waiters: waiters.get(q.name) ?? 0,
    };
  });
  let cumulative = 0;
  const buckets = COMMIT_BUCKETS.map((le, i): [number, number] => [le, (cumulative += stats.commitBuckets[i]!)]);
  return {
    version: ctx.version,
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
    queues,
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

/** The snapshot in Prometheus text exposition format 0.0.4. */
export function prometheus(s: Snapshot): string {
  const out: string[] = [];
  const metric = (name: string, type: string, help: string, samples: [string, number][]) => {
    out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    for (const [labels, value] of samples) out.push(`${name}${labels} ${value}`);
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
  out.push("# HELP mcq_commit_seconds Time to commit a batch, fsync included.", "# TYPE mcq_commit_seconds histogram");
  for (const [le, count] of s.commitSeconds.buckets) out.push(`mcq_commit_seconds_bucket{le="${le}"} ${count}`);
  out.push(`mcq_commit_seconds_bucket{le="+Inf"} ${s.commitSeconds.count}`);
  out.push(`mcq_commit_seconds_sum ${s.commitSeconds.sum}`, `mcq_commit_seconds_count ${s.commitSeconds.count}`);
  one("mcq_store_errors_total", "counter", "Store failures (each undid its batch).", s.storeErrors);
  one("mcq_expired_total", "counter", "Messages that expired unread (--expiry).", s.expired);
  one("mcq_data_dir_bytes", "gauge", "Size of the files in the data directory.", s.dataDirBytes);
  one("mcq_store_writable", "gauge", "1 if a new message can be stored now.", s.writable ? 1 : 0);
  const perQueue = (name: string, type: string, help: string, pick: (q: QueueMetrics) => number) =>
    metric(name, type, help, s.queues.map((q) => [`{queue="${label(q.name)}"}`, pick(q)]));
  perQueue("mcq_queue_depth", "gauge", "Messages in the queue, open ones included.", (q) => q.depth);
  perQueue("mcq_queue_bytes", "gauge", "Bytes of the messages in the queue.", (q) => q.bytes);
  perQueue("mcq_queue_stored_total", "counter", "Messages ever stored in the queue.", (q) => q.total);
  perQueue("mcq_queue_fetched_total", "counter", "Messages ever consumed from the queue.", (q) => q.fetched);
  perQueue("mcq_queue_open", "gauge", "Messages reserved by a consumer (get /open).", (q) => q.open);
  perQueue("mcq_queue_oldest_age_seconds", "gauge", "Age of the oldest message.", (q) => q.oldestAgeSeconds);
  perQueue("mcq_queue_waiters", "gauge", "Blocking gets waiting on the queue.", (q) => q.waiters);
  return out.join("\n") + "\n";
}
