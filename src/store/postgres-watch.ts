/**
 * A node walks its host list (postgres-hosts.ts) only when it connects: while its connection
 * works it never asks the other hosts again. A standby promoted while the old primary keeps
 * running (a manual promotion, or a partition between the old primary and the HA manager only)
 * would then leave the node writing to the old primary for good, saying nothing, while nodes
 * that walked since write to the new one (review 10a M4). So, with more than one host listed,
 * the node asks every host now and then (every heartbeat period), on connections of its own, never
 * holding a batch back: if a host of the same cluster takes writes on a newer timeline than the
 * one it writes to, it says so and drops its connection, and the next use walks to the newest.
 */
import { choosePrimary, survey, type StoreUrl, type Walk } from "./postgres-hosts";

export interface HostWatchDeps {
  url: StoreUrl;
  walk: Walk;
  /** How often to ask (ms). */
  periodMs: number;
  /** How long one host's questions may go unanswered (ms). */
  boundMs: number;
  /** The host the node writes to now, and its connection (null while there is none). */
  host(): string;
  connection(): object | null;
  log(level: "error", message: string): void;
  /** Drops the connection: the next use walks again. */
  moveOn(): void;
}

export function createHostWatch(d: HostWatchDeps) {
  let last = Date.now();
  let running: Promise<void> | null = null;
  /** The connection left: no check until the walk has made another (it would say the same again). */
  let left: object | null = null;

  async function check(): Promise<void> {
    const seen = d.walk.seen;
    const on = d.connection();
    const found = await survey(d.url, d.boundMs);
    const { pick } = choosePrimary(found, seen);
    if (pick === null || seen === null || found[pick]!.timeline <= seen.timeline) return; // nothing newer
    if (d.walk.seen !== seen || d.connection() !== on) return; // walked meanwhile
    const newer = found[pick]!;
    d.log("error", `Postgres: ${newer.label} takes writes on timeline ${newer.timeline}, newer than timeline ${seen.timeline} of ${d.host()}, ` +
      `which this node writes to: a standby was promoted while the old primary still takes writes; moving to the newest timeline`);
    // The walk that follows must not take the old primary again, answering first (review 11b F1).
    d.walk.seen = { system: newer.system || seen.system, timeline: newer.timeline };
    left = on;
    d.moveOn();
  }

  return {
    /** Called from the store's upkeep (maintain): starts a check when one is due. */
    tick(now: number): void {
      const on = d.connection();
      if (d.url.hosts.length < 2 || running !== null || now - last < d.periodMs || on === null || on === left) return;
      last = now;
      running = check().catch(() => {}).finally(() => (running = null)); // a failed host is the walk's business
    },
  };
}
