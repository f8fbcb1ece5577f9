/**
 * batch.within(): a take a networked store answers after its batch was sent (Postgres) reports
 * that batch's change. Its VALUE must be cut if, and only if, that batch fails: a later batch's
 * failure must not cut it (the message is gone from the store for good), and once the batch is
 * durable nothing can cut it.
 */
import { expect, test } from "bun:test";
import { createBatch } from "../../src/batch";
import { newReply, put } from "../../src/session";
import { createMemoryStore } from "../../src/store/memory";
import { StoreError, type QueueStore } from "../../src/store/store";

/** A memory store whose commits complete when the test says so. */
function laterStore() {
  const landings: { ok: () => void; fail: (e: Error) => void }[] = [];
  const store: QueueStore = {
    ...createMemoryStore(),
    dirty: () => true,
    commit: () => new Promise<void>((ok, fail) => landings.push({ ok, fail })),
    rollback: () => {},
  };
  return { store, landings };
}

function valueIn(batch: ReturnType<typeof createBatch>, epoch: number) {
  const reply = newReply(true);
  const undone: string[] = [];
  const ran = batch.within(epoch, () => {
    batch.depends(reply);
    put(reply, "VALUE q 0 1\r\nx\r\n");
    reply.values++;
    batch.onUndo(() => undone.push("open undone"));
  });
  return { reply, undone, ran };
}

test("a later batch's failure leaves a VALUE taken in an earlier batch; that batch's failure cuts it", async () => {
  const { store, landings } = laterStore();
  const batch = createBatch(store, () => {});
  const first = batch.epoch();
  const landed1 = batch.commit(); // batch 1 in flight, its take not answered yet
  const second = batch.epoch();
  expect(second).toBe(first + 1);
  const a = valueIn(batch, first); // answered now, while batch 2 is open
  expect(a.ran).toBe(true);
  expect(a.reply.epoch).toBe(first);
  expect(batch.durable(a.reply)).toBe(false);
  batch.fail(new Error("batch 2 failed"), second);
  expect(a.reply.pieces.join("")).toBe("VALUE q 0 1\r\nx\r\n");
  expect(a.undone).toEqual([]);
  landings[0]!.ok();
  await landed1;
  expect(batch.durable(a.reply)).toBe(true);

  // The same, but the batch that took it fails: the VALUE goes, and so does the open.
  const third = batch.epoch();
  const landed3 = batch.commit();
  const b = valueIn(batch, third);
  landings[1]!.fail(new StoreError("commit failed"));
  await Promise.resolve(landed3).catch(() => {});
  expect(b.reply.pieces.join("")).toBe("SERVER_ERROR commit failed\r\n");
  expect(b.undone).toEqual(["open undone"]);
  // A take answered after its batch was undone: nothing runs, the caller fails the get.
  expect(valueIn(batch, third).ran).toBe(false);
  // Durable already: nothing to mark, nothing to undo.
  const c = valueIn(batch, first);
  expect(c.ran).toBe(true);
  expect(batch.durable(c.reply)).toBe(true);
});

test("takenIn and outcome: each message a get took is tied to the batch that took it, and that batch's fate is known", async () => {
  const { store, landings } = laterStore();
  const batch = createBatch(store, () => {});
  const reply = newReply(true);
  const take = (body: string) => {
    batch.depends(reply);
    put(reply, `VALUE q 0 1\r\n${body}\r\n`);
    reply.values++;
    (reply.taken ??= []).push("q", { id: 1, flags: 0, expires: 0, body: Buffer.from(body) }, reply.pieces.length - 1);
  };
  const first = batch.epoch();
  take("a");
  const landed1 = batch.commit(); // batch 1 in flight
  const second = batch.epoch();
  take("b");
  take("c");
  const landed2 = batch.commit();
  expect([0, 1, 2].map((i) => batch.takenIn(reply, i))).toEqual([first, second, second]);
  expect(batch.outcome(first)).toBe("pending");
  landings[0]!.ok();
  await landed1;
  expect(batch.outcome(first)).toBe("durable");
  expect([0, 1, 2].map((i) => batch.takenIn(reply, i))).toEqual([first, second, second]);
  landings[1]!.fail(new StoreError("commit failed"));
  await Promise.resolve(landed2).catch(() => {});
  expect(batch.outcome(second)).toBe("undone");
  expect(batch.outcome(batch.epoch())).toBe("pending"); // the open batch
  expect(reply.pieces.join("")).toBe("VALUE q 0 1\r\na\r\nEND\r\n"); // cut back to batch 2's mark
  expect(batch.takenIn(reply, 0)).toBe(0); // settled: what is left is durable
});
