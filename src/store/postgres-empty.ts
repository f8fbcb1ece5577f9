/**
 * flush, flush_all and delete on the Postgres store. Another node's sets, or a load, may have
 * committed messages this node's view has not read yet (it reads every node's counters about
 * once a second): so Postgres counts what the statements delete (postgres-sql.ts flush, drop),
 * never the view. The view counts a flush out at once as far as it knows the queue, so that a
 * set right after it in the same batch fits under max_items; the flush's answer corrects it
 * (postgres-send.ts settleFlush), and the counters are read again right after its COMMIT, before
 * its reply leaves.
 */
import type { Delta } from "./postgres-sql";
import type { Flushed, Op, Tx } from "./postgres-send";
import type { View } from "./postgres-view";

export interface EmptyDeps {
  view: View;
  held: Map<number, { queue: string }>;
  tx(): Tx;
  op(o: Op): void;
  change(tx: Tx, queue: string, d: Partial<Delta>, created?: number, counted?: boolean): void;
  hold(tx: Tx, id: number, h: null): void;
}

export function createEmptying(d: EmptyDeps) {
  /** Empties `queues` (null: all): what Postgres holds, counted by its statement. */
  function flush(queues: string[] | null): void {
    const tx = d.tx();
    const guess = new Map<string, Flushed>();
    for (const name of queues ?? d.view.list().map((q) => q.name)) {
      const q = d.view.get(name);
      if (q !== undefined) guess.set(name, { items: q.items, bytes: q.bytes, open: q.open, delayed: q.delayed });
    }
    d.op({ k: "flush", queue: queues === null ? null : queues[0]!, guess });
    // Counted: the statement counts in Postgres; the batch's own counter upsert leaves it out.
    for (const [name, g] of guess) d.change(tx, name, { items: -g.items, bytes: -g.bytes, open: -g.open, delayed: -g.delayed }, 0, true);
    for (const [id, h] of d.held) if (queues === null || h.queue === queues[0]) d.hold(tx, id, null);
    tx.refreshers.push(() => {}); // the sums are read right after its COMMIT (postgres-batches.ts sendTx)
  }

  return {
    flush: (queue: string) => flush([queue]),
    flushAll: () => flush(null),
    /**
     * Answered by its statement, not by the view: a queue another node or a load made within the
     * last second is not in the view yet, and one another node deleted may still be (review 9 N4).
     */
    drop(queue: string): Promise<boolean> {
      const tx = d.tx();
      d.view.drop(queue);
      let answer!: (existed: boolean) => void;
      let fail!: (e: unknown) => void;
      const existed = new Promise<boolean>((ok, no) => ((answer = ok), (fail = no)));
      existed.catch(() => {}); // a caller that does not wait for the answer (noreply) is not told of a failure
      d.op({ k: "drop", queue, answer, fail });
      tx.deltas.delete(queue); // its rows are deleted: only what follows the drop counts
      tx.counted.delete(queue);
      tx.dropped.add(queue);
      for (const [id, h] of d.held) if (h.queue === queue) d.hold(tx, id, null);
      return existed;
    },
  };
}
