/**
 * Bugs the seeded stress test (scripts/stress.ts) found in the rewritten core, each cut down to
 * its smallest deterministic form. They fail until the core is fixed; the stress test finds them
 * again at random seeds.
 *
 * 1-3. A reply that rests on session state an earlier request of the same batch changed is not
 *      marked as depending on the batch (batch.depends). When the batch fails, the change is undone
 *      but that reply still leaves as it was: the client is told something the server no longer
 *      holds true. With an abort, the message the client gave back stays open on its connection,
 *      and its next close deletes it unseen (lost); with a close, the message it was told is
 *      confirmed stays open (delivered again later).
 * 4.   A client that vanishes while the server holds its output (output-full, reading paused) is
 *      never noticed: the write in the drain handler returns -1, which conn.ts treats as "nothing
 *      written yet", and with reading paused Bun reports no close. The connection stays counted
 *      and its open messages are never given back.
 * 5.   After a lease ran out, an open whose batch fails still clears the "lease expired" note
 *      (get.ts fetch: s.expired.delete has no undo), so the next close answers END as if it had
 *      confirmed the message another consumer got meanwhile.
 * 6.   On a full disk, a set refused for space (before it changed anything) still fails its whole
 *      batch, so a get that ran before it in the batch fails too (issue 9, item 5: "the gets in it
 *      fail too"), and so do give-backs and lease expiries that share the batch.
 */
import { afterAll, expect, test } from "bun:test";
import { join } from "node:path";
import { removeDir, serverCommand, set, startServer, stopAll, tempDir, tmpfsDir, value, type Client } from "./harness";

const mountPoint = tmpfsDir("mcq-findings-", 16);
const mounted = mountPoint !== null;
if (!mounted) console.warn("stress finding 6 skipped: cannot mount a tmpfs (needs root)");

afterAll(async () => {
  await stopAll();
  if (mounted) removeDir(mountPoint);
});

/** A set into fail-* poisons the commit of the batch it is in (src/store/faults.ts). */
const poisoned = () => startServer([], join(tempDir(), "data"), serverCommand(), { MCQ_FAULTS: "poison=fail-" });
const FAILED = "SERVER_ERROR injected failure\r\n";

test("stress finding 1: open, open and a failed batch: the second open is not refused for an open the batch undid", async () => {
  const s = await poisoned();
  const a = await s.connect();
  expect(await a.call(set("f1", "m1"))).toBe("STORED\r\n");
  // One write, one batch: the first open is undone with the batch, so nothing is open.
  expect(await a.call("get f1/open\r\nget f1/open\r\n" + set("fail-x", "x"))).toBe(FAILED.repeat(3));
  expect(await a.call("stats queue f1\r\n")).toContain("STAT open 0\r\n");
});

test("stress finding 2: abort, abort and a failed batch: the message the client gave back is not deleted by its next close", async () => {
  const s = await poisoned();
  const a = await s.connect();
  expect(await a.call(set("f2", "m1") + "get f2/open\r\n")).toBe("STORED\r\n" + value("f2/open", "m1") + "END\r\n");
  const replies = await a.call("get f2/abort\r\nget f2/abort\r\n" + set("fail-x", "x"));
  // Either both aborts fail with their batch, or the message really is back in its queue.
  if (replies !== FAILED.repeat(3)) {
    expect(replies).toBe(FAILED + "END\r\n" + FAILED);
    expect(await a.call("stats queue f2\r\n")).toContain("STAT open 0\r\n");
  }
  // Seen: "SERVER_ERROR, END, SERVER_ERROR", the message still open here, and this close deleted it.
  await a.call("get f2/close\r\n");
  expect(await a.call("get f2\r\n")).toBe(replies === FAILED.repeat(3) ? "END\r\n" : value("f2", "m1") + "END\r\n");
});

test("stress finding 3: close, close and a failed batch: END is not said for a close that confirmed nothing", async () => {
  const s = await poisoned();
  const [a, b] = [await s.connect(), await s.connect()];
  expect(await a.call(set("f3", "m1") + "get f3/open\r\n")).toBe("STORED\r\n" + value("f3/open", "m1") + "END\r\n");
  const replies = await a.call("get f3/close\r\nget f3/close\r\n" + set("fail-x", "x"));
  if (replies.includes("END\r\n")) {
    // The client was told m1 is confirmed: it must never be handed out again.
    a.close();
    await until(b, "stats queue f3\r\n", "STAT open 0\r\n");
    expect(await b.call("get f3\r\n")).toBe("END\r\n");
  } else expect(replies).toBe(FAILED.repeat(3));
});

test("stress finding 4: clients that vanish while their output is full are noticed, and their open messages go back", async () => {
  const s = await startServer();
  const b = await s.connect();
  expect(await b.call(set("big", "b".repeat(256 * 1024)))).toBe("STORED\r\n");
  await Promise.all(
    Array.from({ length: 8 }, async (_, i) => {
      const a = await s.connect();
      expect(await a.call(set(`f4-${i}`, "m") + `get f4-${i}/open\r\n`)).toBe("STORED\r\n" + value(`f4-${i}/open`, "m") + "END\r\n");
      a.socket.pause(); // reads nothing: 10 MB of peeks fill the server's 4 MB of unsent output
      a.write("get big/peek\r\n".repeat(40));
      // Nothing answers "the server's output for it is full" (a paused client gets no reply), so
      // give the server a moment to fill the socket buffers and stop reading it.
      await Bun.sleep(100);
      a.close();
    }),
  );
  // Seen: curr_connections stays at 7 to 9 for good, and the open messages stay open.
  await until(b, "stats\r\n", "STAT curr_connections 1\r\n");
  for (let i = 0; i < 8; i++) expect(await b.call(`get f4-${i}\r\n`)).toBe(value(`f4-${i}`, "m") + "END\r\n");
});

test("stress finding 5: after a lease ran out, an open undone with its batch does not erase the lease error the next close owes", async () => {
  const s = await startServer(["--open-timeout", "100"], join(tempDir(), "data"), serverCommand(), { MCQ_FAULTS: "poison=fail-" });
  const [a, b] = [await s.connect(), await s.connect()];
  expect(await a.call(set("f5", "m1") + "get f5/open\r\n")).toBe("STORED\r\n" + value("f5/open", "m1") + "END\r\n");
  await until(b, "stats queue f5\r\n", "STAT open 0\r\n"); // the lease ran out: m1 is back
  expect(await b.call("get f5\r\n")).toBe(value("f5", "m1") + "END\r\n"); // and someone else took it
  expect(await a.call(set("f5", "m2"))).toBe("STORED\r\n");
  expect(await a.call("get f5/open\r\n" + set("fail-x", "x"))).toBe(FAILED.repeat(2));
  // Nothing changed for a since the lease ran out. Seen: END, and get f5/close/open would have
  // "confirmed" m1 for a client that never learns another consumer had it.
  expect(await a.call("get f5/close\r\n")).toBe("CLIENT_ERROR the open message's lease expired; it is back in its queue\r\n");
});

// Under CI a full disk is never skipped: not being able to mount is a failure there.
test.skipIf(!mounted && process.env.CI !== "true")("stress finding 6: on a full disk, a get is not failed by a set refused after it", async () => {
  expect(mounted).toBe(true);
  const s = await startServer([], join(mountPoint!, "data"));
  const a = await s.connect();
  const body = "x".repeat(64 * 1024);
  let reply = "";
  for (let i = 0; i < 1000 && (reply = await a.call(set("f6", body))) === "STORED\r\n"; i++);
  expect(reply).toBe("SERVER_ERROR out of space\r\n");
  // One write, one batch. Seen: "SERVER_ERROR out of space" twice, the get undone with the set.
  // Now the get keeps its VALUE whatever the set gets (refused alone, or let in: a page is free).
  const got = await a.call("get f6\r\n" + set("f6", "y"));
  expect([value("f6", body) + "END\r\nSERVER_ERROR out of space\r\n", value("f6", body) + "END\r\nSTORED\r\n"]).toContain(got);
});

/** Polls `command` until its reply contains `line` (5 s at most). */
async function until(c: Client, command: string, line: string): Promise<void> {
  let got = "";
  for (let i = 0; i < 500; i++) {
    got = await c.call(command);
    if (got.includes(line)) return;
    await Bun.sleep(10);
  }
  expect(got).toContain(line);
}
