/**
 * The log line of a store failure (each undoes its batch). During an outage every batch fails,
 * dozens a second: the first is said as an ERROR, the rest are counted (each at debug level, -v),
 * and once no failure has come for `quietMs` the count is said in one line.
 */
import type { StoreError } from "./store/store";
import type { Logger } from "./log";

export function createFailureLog(log: Logger, quietMs = 5000): (e: StoreError) => void {
  let more = 0;
  let first = 0;
  let last = "";
  let timer: ReturnType<typeof setTimeout> | null = null;
  const end = () => {
    timer = null;
    if (more > 0) {
      log.error(`store failures: ${more} more batches undone in the ${((Date.now() - first - quietMs) / 1000).toFixed(1)} s after the first (the last: ${last})`);
    }
    more = 0;
  };
  return (e) => {
    if (timer === null) {
      first = Date.now();
      log.error(`store failure, batch undone: ${e.message}`);
    } else {
      more++;
      last = e.message;
      log.debug(`store failure, batch undone: ${e.message}`);
      clearTimeout(timer);
    }
    timer = setTimeout(end, quietMs);
    timer.unref?.();
  };
}
