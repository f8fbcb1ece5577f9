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
  setCmds: number;
  setHits: number;
  bytesRead: number;
  bytesWritten: number;
  commits: number;
  storeErrors: number;
}

export function createStats(): Stats {
  return {
    currConnections: 0,
    totalConnections: 0,
    rejectedConnections: 0,
    getCmds: 0,
    getHits: 0,
    getMisses: 0,
    setCmds: 0,
    setHits: 0,
    bytesRead: 0,
    bytesWritten: 0,
    commits: 0,
    storeErrors: 0,
  };
}

/** `stats reset`: zeroes the counters that count events; gauges (current connections) stay. */
export function resetStats(stats: Stats): void {
  const { currConnections } = stats;
  Object.assign(stats, createStats(), { currConnections });
}
