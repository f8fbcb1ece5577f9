/**
 * This node's heartbeat and its reaping of dead nodes (postgres-sql.ts heartbeat, reap), run
 * between batches (postgres.ts maintain).
 *
 * Each node's row holds its own lease (--node-timeout), and a node is dead when silent past its
 * own (postgres-sql.ts DEAD): judged by the reaper's, nodes with different timeouts (a rolling
 * change of the flag) reaped each other while they ran, and a message one of them held open was
 * handed out again (review 10a M5). A node beats every third of its own lease, and reaps as often
 * as the shortest lease among the nodes needs: one with a long timeout beside one with a short
 * timeout finds it dead within a third of that short lease past it, not of its own.
 */
import type { SQL } from "bun";
import type { Statements } from "./postgres-sql";
import type { Witness } from "./postgres-home";

export interface LeaseDeps {
  st: Statements;
  node: number;
  /** This node's lease (s). */
  leaseS: number;
  witness: Witness;
  /** The reap (postgres-features.ts reap: dead letters first). */
  reap(c: SQL, leaseS: number, only: null, witnessedS: number): Promise<number>;
  /** Runs work on the store's connection between batches (postgres-batches.ts background). */
  background(fn: (c: SQL) => Promise<void>): void;
  /** The heartbeat found this node reaped (postgres.ts lost). */
  lost(freed: number): void;
  /** Open messages of dead nodes came back to their queues. */
  returned(n: number): void;
}

export function createLease(d: LeaseDeps) {
  let lastBeat = Date.now();
  /** The shortest lease among the nodes (this one's included), as the last heartbeat found them. */
  let shortest = d.leaseS;
  return {
    /** Beats, then reaps, once a third of the shortest lease has passed since the last beat. */
    tick(now: number): void {
      if (now - lastBeat < (shortest * 1000) / 3) return;
      lastBeat = now;
      d.background(async (c) => {
        const beat = await d.st.heartbeat(c, d.node, d.leaseS);
        d.witness.beat(shortest);
        shortest = beat.shortest;
        if (beat.back) d.lost(beat.freed);
        // No node can be found dead before this one has been connected for the shortest lease.
        const witnessed = d.witness.seconds();
        const back = witnessed >= shortest ? await d.reap(c, d.leaseS, null, witnessed) : 0;
        if (back > 0) d.returned(back);
      });
    },
  };
}
