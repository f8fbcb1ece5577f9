/**
 * LISTEN/NOTIFY between nodes: a batch that stored or returned messages notifies the queues'
 * names on one channel at commit (postgres-sql.ts notify), and every node's listener wakes its
 * waiting gets for those queues. Not polling: a notification reaches the other nodes in about a
 * millisecond. After a (re)subscription every waiting get looks again, as a
 * notification may have been missed meanwhile.
 */
import { SQL } from "bun";

export interface Listener {
  start(): void;
  restart(): void;
  /** Drops the LISTEN connection until the next start (see postgres.ts replaceConnection). */
  pause(): void;
  stop(): Promise<void>;
}

export function createListener(
  channel: string,
  hostUrl: () => string,
  available: (queue: string | null) => void,
  log: (level: "info" | "warn", message: string) => void,
): Listener {
  let sub: { unlisten(): Promise<void> } | null = null;
  let lsql: SQL | null = null;
  const start = () => {
    const mine = (lsql = new SQL(hostUrl(), { max: 1 }));
    void mine
      .listen(channel, (queue) => available(queue), () => available(null))
      .then((s) => (sub = s))
      .catch((e: Error) => {
        if (lsql === mine) log("warn", `Postgres LISTEN: ${e.message}`);
      });
  };
  const pause = () => {
    const old = lsql;
    lsql = null;
    sub = null;
    if (old !== null) void old.close({ timeout: 0 }).catch(() => {});
  };
  return {
    start,
    restart() {
      pause();
      start();
    },
    pause,
    async stop() {
      await sub?.unlisten().catch(() => {});
      await lsql?.close({ timeout: 0 }).catch(() => {});
    },
  };
}
