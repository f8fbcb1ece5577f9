/**
 * The server-wide counters behind `stats` (memcached's names where it has one). Per-queue
 * counters live in the store, because they must survive a crash; these restart at zero.
 */
export interface Stats {
  currConnections: number;
  totalConnections: number;
  rejectedConnections: number;
  getCmds: number;
  getHits: number;
  getMisses: number;
  /** Get keys whose /t= wait ran out with no message (of getMisses; the server stopping ends a wait too). */
  getTimeouts: number;
  setCmds: number;
  setHits: number;
  bytesRead: number;
  bytesWritten: number;
  commits: number;
  storeErrors: number;
  /** Bytes buffered by all connections now (input not yet run, output not yet sent). */
  bufferedBytes: number;
  /** Connections not read now because the server is over --max-conn-memory. */
  overBudget: number;
  /** Commit (and fsync) durations: counts per COMMIT_BUCKETS upper bound, then +Inf. */
  commitBuckets: number[];
  commitSeconds: number;
}

/** Upper bounds in seconds of the commit-time histogram. */
export const COMMIT_BUCKETS = [0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1];

export function observeCommit(stats: Stats, seconds: number): void {
  stats.commits++;
  stats.commitSeconds += seconds;
  let i = 0;
  while (i < COMMIT_BUCKETS.length && seconds > COMMIT_BUCKETS[i]!) i++;
  stats.commitBuckets[i]!++;
}

export function createStats(): Stats {
  return {
    currConnections: 0,
    totalConnections: 0,
    rejectedConnections: 0,
    bufferedBytes: 0,
    overBudget: 0,
    getCmds: 0,
    getHits: 0,
    getMisses: 0,
    getTimeouts: 0,
    setCmds: 0,
    setHits: 0,
    bytesRead: 0,
    bytesWritten: 0,
    commits: 0,
    storeErrors: 0,
    commitBuckets: new Array(COMMIT_BUCKETS.length + 1).fill(0),
    commitSeconds: 0,
  };
}

/** `stats reset`: zeroes the counters that count events; gauges (current connections) stay. */
export function resetStats(stats: Stats): void {
  // Gauges are the state of the server now, not counters: they survive a reset.
  const { currConnections, bufferedBytes, overBudget } = stats;
  Object.assign(stats, createStats(), { currConnections, bufferedBytes, overBudget });
}
