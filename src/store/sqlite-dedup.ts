/**
 * Idempotent sets in the SQLite store (store.ts, Dedup): the `dedup` table holds each token a
 * queue took with the end of its window, written in the batch of its set, so a token is durable
 * exactly when its message is, and kill -9 forgets neither. A token is looked up by its unique
 * index (one seek); housekeeping deletes the ones whose window ended, by the index on `until`.
 * A set a token turned away is counted (`counted`: the queue's deduplicated, saved in the batch).
 */
import type { Statement } from "bun:sqlite";
import type { Dedup } from "./store";

/** `sql` prepares a statement the store finalizes; `counted` hears of each set turned away. */
export function createSqliteDedup(sql: (text: string) => Statement, tx: () => void, inTx: () => boolean,
  counted: (queue: string) => void): Dedup {
  const find = sql("SELECT until FROM dedup WHERE queue = ? AND token = ?");
  const put = sql("INSERT OR REPLACE INTO dedup(queue, token, until) VALUES (?, ?, ?)");
  const anyEnded = sql("SELECT 1 FROM dedup WHERE until <= ? LIMIT 1");
  const sweep = sql("DELETE FROM dedup WHERE rowid IN (SELECT rowid FROM dedup WHERE until <= ? LIMIT ?)");
  return {
    seen(queue, token, now) {
      const until = find.values(queue, token)[0]?.[0] as number | undefined;
      if (until === undefined || until <= now) return false;
      counted(queue);
      return true;
    },
    remember(queue, token, until) {
      tx();
      put.run(queue, token, until);
    },
    sweep(now, limit) {
      // No transaction for nothing: a dirty store would never run its upkeep (see sweepExpired).
      if (!inTx() && anyEnded.values(now).length === 0) return 0;
      tx();
      return sweep.run(now, limit).changes;
    },
  };
}
