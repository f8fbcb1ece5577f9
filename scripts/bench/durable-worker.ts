/**
 * The Worker of scripts/bench/minimal-durable.ts `--durable worker` (issue 15, design (a)): it owns
 * the SQLite connection. The first message opens the database ({ path, sync }) and is answered
 * { ready: true }; every later one is a batch ({ n, bytes }: packed by durable-batch.ts `pack`,
 * transferred), applied and committed in order, and answered { n } once the COMMIT returned (with
 * synchronous FULL, after its fsync), or { n, error } if it failed.
 */
import { openDurable, unpack, type Durable, type Sync } from "./durable-batch";

declare var self: Worker;

let db: Durable | null = null;

self.onmessage = (event: MessageEvent) => {
  const m = event.data as { path: string; sync: Sync } | { n: number; bytes: ArrayBuffer };
  if ("path" in m) {
    try {
      db = openDurable(m.path, m.sync);
      postMessage({ ready: true });
    } catch (e) {
      postMessage({ error: `cannot open ${m.path}: ${(e as Error).message}` });
    }
    return;
  }
  try {
    const { sets, takes } = unpack(m.bytes);
    db!.apply(sets, takes);
    postMessage({ n: m.n });
  } catch (e) {
    postMessage({ n: m.n, error: (e as Error).message });
  }
};
