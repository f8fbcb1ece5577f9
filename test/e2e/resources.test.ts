/**
 * The short form of scripts/resources.ts: memory stays bounded with a backlog of 200,000
 * messages and through a 200 MB fill and drain, and the drained data directory is small again
 * on its own. `bun run resources` is the long form (1M messages, 1 GB).
 */
import { expect, test } from "bun:test";
import { resources } from "../../scripts/resources";

test("RSS with 200,000 queued messages and through a 200 MB fill; the drained directory shrinks", async () => {
  const r = await resources(200_000, 200);
  console.log(JSON.stringify(r));
  // The page cache (-m, 64 MB by default) is most of what grows; nothing grows with the backlog.
  expect(r.rssQueuedMb).toBeLessThan(150);
  expect(r.rssFillPeakMb).toBeLessThan(250);
  expect(r.dataDirFullMb).toBeGreaterThan(190);
  expect(r.dataDirDrainedMb).toBeLessThan(10);
}, 240_000); // 60-120 s on a loaded 2-core machine: it moves 200 MB through the store
