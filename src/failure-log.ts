/**
 * The log line of a store failure (each undoes its batch). During an outage every batch fails,
 * dozens a second: the first is said as an ERROR, the rest are counted (each at debug level, -v),
 * told once a minute while they go on, and the count is said once a batch commits again. The
 * outage ends at a commit, not after a quiet time: a hung Postgres fails one batch per timeout
 * (5 s, or 13 s when an outcome is asked), and any quiet time short enough to be useful would
 * make each of those failures a new outage with an ERROR of its own (review 10a L1).
 */
import type { StoreError } from "./store/store";
import type { Logger } from "./log";

export interface FailureLog {
  /** A batch was undone by `e`. */
  failed(e: StoreError): void;
  /** A batch that wrote committed: an outage, if any, is over. */
  committed(): void;
}

export function createFailureLog(log: Logger, now: () => number = Date.now, tellEveryMs = 60_000): FailureLog {
  let out = false;
  let more = 0;
  let first = 0;
  let told = 0;
  let last = "";
  const since = () => ((now() - first) / 1000).toFixed(1);
  return {
    failed(e) {
      if (!out) {
        [out, more, first, told] = [true, 0, now(), now()];
        log.error(`store failure, batch undone: ${e.message}`);
        return;
      }
      more++;
      last = e.message;
      log.debug(`store failure, batch undone: ${e.message}`);
      if (now() - told >= tellEveryMs) {
        told = now();
        log.error(`store failures go on: ${more} more batches undone in the ${since()} s since the first (the last: ${last})`);
      }
    },
    committed() {
      if (!out) return;
      out = false;
      if (more > 0) log.error(`store failures: ${more} more batches undone in the ${since()} s after the first (the last: ${last})`);
    },
  };
}
