/**
 * The producer: queues a thumbnail job as one message on the `thumbnails` queue of mcq. The
 * memcached client stores an object as JSON (and gives it back as one on get).
 */
import type Memcached from "memcached";

export const QUEUE = "thumbnails";

export interface Job {
  image: string;
  width: number;
}

/** Resolves once mcq has answered STORED: the job is durable from then on. */
export function enqueue(client: Memcached, job: Job): Promise<void> {
  return new Promise((done, fail) => {
    client.set(QUEUE, job, 0, (error, stored) => {
      if (error) fail(error);
      else if (stored !== true) fail(new Error(`mcq did not store the job for ${job.image}`));
      else done();
    });
  });
}
