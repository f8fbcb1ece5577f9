/**
 * discard_old on the Postgres store (issue 12): a set to a full queue whose settings say
 * `discard_old = true` drops the queue's oldest messages instead of being refused.
 *
 * The node's view says when a queue is full (queue-limits.ts admit, as for every limit on this
 * store); what to drop is decided in Postgres, by one statement placed in the batch just before
 * the set (postgres-features-sql.ts discard): it reads every node's counter rows, adds the
 * batch's own changes not yet counted there, and drops the oldest messages that may be handed
 * out until the set fits, counting them (fetched, discarded) in this node's rows in the same
 * statement. So the drop and the set commit together, the count is exact over nodes, and a
 * message open on any node is never dropped (its row is skipped, locked or not).
 *
 * As on SQLite, the set is refused, and nothing dropped, when the open and delayed messages
 * alone fill max_items (as this node's view counts them: other nodes' opens and delayed sets of
 * the last second may be missing, and the set is then stored past max_items, as is one whose
 * oldest message another node's discard has locked: docs/protocol.md). Unlike SQLite, the view does not know
 * the bytes of open and delayed messages: when they alone fill max_bytes, the set is stored past
 * the limit.
 */
import type { SQL } from "bun";
import type { Discard, FeatureStatements } from "./postgres-features-sql";
import type { Delta } from "./postgres-sql";
import type { Tx } from "./postgres-send";
import type { View } from "./postgres-view";

export type DiscardOp = { k: "discard" } & Discard;

export interface DiscardDeps {
  node: number;
  view: View;
  tx(): Tx;
  feature(f: DiscardOp): void;
  change(tx: Tx, queue: string, d: Partial<Delta>): void;
  /** The token a set into `queue` depends on now (a fanout copy's, its parent's), or null. */
  parentToken(queue: string): { queue: string; token: string } | null;
}

export function createDiscard(d: DiscardDeps, fst: FeatureStatements) {
  return {
    /** Store.discardOld: drops in the set's batch; false if the set must be refused all the same. */
    discardOld(queue: string, maxItems: number, maxBytes: number, adding: number): boolean {
      const q = d.view.get(queue);
      if (maxItems > 0 && q !== undefined && q.open + q.delayed + 1 > maxItems) return false;
      const tx = d.tx();
      // What the batch's counter upsert (sent after its statements) will add for the ops before this one.
      const own = tx.deltas.get(queue);
      const counted = tx.counted.get(queue);
      const pending = (k: keyof Delta) => (own?.[k] ?? 0) - (counted?.[k] ?? 0);
      const t = d.parentToken(queue);
      d.feature({
        k: "discard", queue, maxItems, maxBytes, adding, pendItems: pending("items"), pendBytes: pending("bytes"),
        token: t?.token ?? null, tokenQueue: t?.queue ?? null,
      });
      return true;
    },
    /** Runs each discard as its own statement, in order: each reads the counts the one before left. */
    statement(tx: Tx, c: SQL, ops: DiscardOp[]): Promise<void> {
      return Promise.all(
        ops.map((o) =>
          fst.discard(c, o, d.node).then((r) => {
            // The statement counted it in Postgres; the view follows.
            if (r.n > 0 && !tx.undone && d.view.has(o.queue)) {
              d.change(tx, o.queue, { items: -r.n, bytes: -r.bytes, fetched: r.n, discarded: r.n });
            }
          }),
        ),
      ).then(() => {});
    },
  };
}
