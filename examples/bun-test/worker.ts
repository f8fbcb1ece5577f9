/**
 * The worker: takes jobs with mcq's reliable reads. `get thumbnails/t=…/open` waits for a job and
 * keeps it reserved for this connection; `/close` deletes it once handled, `/abort` puts a job
 * whose handler failed back at the head of the queue. Reserved jobs belong to a connection, so
 * the client must use one connection (poolSize: 1).
 */
import type Memcached from "memcached";
import { QUEUE, type Job } from "./producer";

function get(client: Memcached, key: string): Promise<unknown> {
  return new Promise((done, fail) => client.get(key, (error, data) => (error ? fail(error) : done(data))));
}

/**
 * Handles jobs until none has come for `idleMs`; returns how many were handled. A job whose
 * handler throws is given back and comes again.
 */
export async function work(client: Memcached, handle: (job: Job) => Promise<void>, idleMs = 200): Promise<number> {
  let handled = 0;
  for (;;) {
    const job = (await get(client, `${QUEUE}/t=${idleMs}/open`)) as Job | undefined;
    if (!job) return handled;
    try {
      await handle(job);
    } catch {
      await get(client, `${QUEUE}/abort`);
      continue;
    }
    await get(client, `${QUEUE}/close`);
    handled++;
  }
}
