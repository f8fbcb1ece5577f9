/**
 * The command layer over the memory store with a frozen clock (Kestrel's handler specs):
 * expiry and leases are checked by moving time, not by waiting for it.
 */
import { describe, expect, test } from "bun:test";
import { createBatch } from "../../src/batch";
import { execute } from "../../src/commands";
import { DEFAULTS, type Config } from "../../src/config";
import { createWaiters, type Context } from "../../src/context";
import { continueGet, expireLeases } from "../../src/get";
import { createLogger } from "../../src/log";
import { createFramer } from "../../src/protocol/framer";
import { createSession, type Session } from "../../src/session";
import { createStats } from "../../src/stats";
import { createMemoryStore } from "../../src/store/memory";
import { StoreError, type QueueStore } from "../../src/store/store";

function harness(config: Partial<Config> = {}, store: QueueStore = createMemoryStore()) {
  let now = Date.UTC(2026, 0, 1);
  const ctx: Context = {
    store,
    stats: createStats(),
    config: { ...DEFAULTS, ...config },
    batch: createBatch(store, () => {}),
    log: createLogger(0, () => {}),
    waiters: createWaiters(),
    sessions: new Set(),
    now: () => now,
    startedAt: now,
    version: "1.0.0",
    resume: () => {},
    retry: () => {},
    stopping: false,
  };
  const framer = createFramer({ maxLine: 8192, maxBody: 1 << 20 });
  const session = (): Session => {
    const s = createSession();
    ctx.sessions.add(s);
    return s;
  };
  /** Runs the commands in `input` for session s, commits, and returns the reply bytes. */
  function send(s: Session, input: string): string {
    framer.push(Buffer.from(input, "latin1"));
    if (s.get !== null) continueGet(ctx, s); // a waiting get that was served or timed out goes on
    for (let r = framer.next(); r !== null; r = framer.next()) execute(ctx, s, r);
    ctx.batch.commit();
    // Like the server: the replies up to the first one still being built (a waiting get).
    const ready = s.held.findIndex((r) => !r.complete);
    const done = s.held.splice(0, ready < 0 ? s.held.length : ready);
    return done.flatMap((r) => r.pieces.map((p) => (typeof p === "string" ? p : Buffer.from(p).toString("latin1")))).join("");
  }
  return { ctx, send, session, advance: (ms: number) => (now += ms), now: () => now };
}

describe("--expiry with a frozen clock", () => {
  test("relative seconds up to 30 days, absolute Unix time above, 0 never", () => {
    const h = harness({ expiry: true });
    const s = h.session();
    const abs = Math.floor(h.now() / 1000) + 100;
    expect(h.send(s, `set q 0 10 1\r\na\r\nset q 0 0 1\r\nb\r\nset q 0 ${abs} 1\r\nc\r\nset q 0 2592000 1\r\nd\r\n`)).toBe("STORED\r\n".repeat(4));
    h.advance(10_000);
    // a expired exactly now; b never expires; c expires at abs; d in 30 days
    expect(h.send(s, "get q\r\n")).toBe("VALUE q 0 1\r\nb\r\nEND\r\n");
    h.advance(89_999);
    expect(h.send(s, "get q/peek\r\n")).toBe("VALUE q/peek 0 1\r\nc\r\nEND\r\n");
    h.advance(1);
    expect(h.send(s, "get q\r\nget q\r\n")).toBe("VALUE q 0 1\r\nd\r\nEND\r\nEND\r\n");
    expect(h.ctx.store.totals().expired).toBe(2);
  });

  test("without --expiry, exptime is ignored", () => {
    const h = harness();
    const s = h.session();
    h.send(s, "set q 0 1 1\r\na\r\n");
    h.advance(3_600_000);
    expect(h.send(s, "get q\r\n")).toBe("VALUE q 0 1\r\na\r\nEND\r\n");
  });

  test("a negative exptime is already expired", () => {
    const h = harness({ expiry: true });
    const s = h.session();
    expect(h.send(s, "set q 0 -1 1\r\na\r\nget q\r\n")).toBe("STORED\r\nEND\r\n");
  });
});

describe("leases with a frozen clock", () => {
  test("an open message past --open-timeout goes back, and the late close is told", () => {
    const h = harness({ openTimeoutMs: 1000 });
    const [a, b] = [h.session(), h.session()];
    h.send(a, "set q 0 0 1\r\nx\r\n");
    expect(h.send(a, "get q/open\r\n")).toBe("VALUE q/open 0 1\r\nx\r\nEND\r\n");
    h.advance(999);
    expireLeases(h.ctx, h.now());
    expect(h.send(b, "get q\r\n")).toBe("END\r\n");
    h.advance(1);
    expireLeases(h.ctx, h.now());
    h.ctx.batch.commit();
    expect(h.send(b, "get q/open\r\n")).toBe("VALUE q/open 0 1\r\nx\r\nEND\r\n");
    // One reply: the error line alone, said once; the next close is a plain no-op.
    expect(h.send(a, "get q/close\r\n")).toBe("CLIENT_ERROR the open message's lease expired; it is back in its queue\r\n");
    expect(h.send(a, "get q/close\r\n")).toBe("END\r\n");
    expect(h.send(b, "get q/close\r\n")).toBe("END\r\n");
    expect(h.ctx.store.list()).toEqual([{ name: "q", total: 1, fetched: 1 }]);
  });
});

/**
 * The memory store with one method that throws StoreError(reason) while `failing.on` is set
 * (and the call matches `when`, if given).
 */
function failingStore<K extends "commit" | "enqueue" | "dequeue">(
  method: K,
  reason: string,
  when: (...args: Parameters<QueueStore[K]>) => boolean = () => true,
) {
  const store = createMemoryStore();
  const failing = { on: false, store: { ...store } as QueueStore };
  const original = store[method] as (...args: Parameters<QueueStore[K]>) => ReturnType<QueueStore[K]>;
  (failing.store[method] as typeof original) = (...args) => {
    if (failing.on && when(...args)) throw new StoreError(reason);
    return original(...args);
  };
  return failing;
}

describe("store failures", () => {
  test("a failing commit turns the batch's replies into SERVER_ERROR and loses nothing", () => {
    const failing = failingStore("commit", "out of space");
    const h = harness({}, failing.store);
    const s = h.session();
    expect(h.send(s, "set q 0 0 1\r\na\r\n")).toBe("STORED\r\n");
    failing.on = true;
    expect(h.send(s, "set q 0 0 1\r\nb\r\nget q\r\nversion\r\n")).toBe(
      "SERVER_ERROR out of space\r\nSERVER_ERROR out of space\r\nVERSION 1.0.0\r\n",
    );
    failing.on = false;
    expect(h.send(s, "get q\r\nget q\r\n")).toBe("VALUE q 0 1\r\na\r\nEND\r\nEND\r\n");
  });

  test("a failing enqueue answers SERVER_ERROR and the connection goes on", () => {
    const failing = failingStore("enqueue", "out of space", (queue) => queue === "full");
    failing.on = true;
    const h = harness({}, failing.store);
    const s = h.session();
    expect(h.send(s, "set full 0 0 1\r\na\r\nset ok 0 0 1\r\nb\r\nget ok\r\n")).toBe(
      "SERVER_ERROR out of space\r\nSTORED\r\nVALUE ok 0 1\r\nb\r\nEND\r\n",
    );
  });

  test("a failing dequeue answers one SERVER_ERROR line and the message stays", () => {
    const failing = failingStore("dequeue", "I/O error (SQLITE_IOERR_WRITE)");
    const h = harness({}, failing.store);
    const s = h.session();
    h.send(s, "set q 0 0 1\r\na\r\n");
    failing.on = true;
    expect(h.send(s, "get q\r\nversion\r\n")).toBe("SERVER_ERROR I/O error (SQLITE_IOERR_WRITE)\r\nVERSION 1.0.0\r\n");
    failing.on = false;
    expect(h.send(s, "get q\r\n")).toBe("VALUE q 0 1\r\na\r\nEND\r\n");
  });

  test("a failure while handing a message to a waiter gives it nothing: it keeps waiting, then gets the next", () => {
    const failing = failingStore("dequeue", "out of space");
    const h = harness({}, failing.store);
    const resumed: Session[] = [];
    h.ctx.resume = (s) => void resumed.push(s);
    const [waiter, producer] = [h.session(), h.session()];
    expect(h.send(waiter, "get q/t=5000\r\n")).toBe("");
    failing.on = true;
    expect(h.send(producer, "set q 0 0 1\r\na\r\n")).toBe("SERVER_ERROR out of space\r\n");
    expect(resumed).toEqual([]);
    expect(h.ctx.waiters.count()).toBe(1);
    failing.on = false;
    expect(h.send(producer, "set q 0 0 1\r\nb\r\n")).toBe("STORED\r\n");
    expect(resumed).toEqual([waiter]);
    expect(h.send(waiter, "")).toBe("VALUE q/t=5000 0 1\r\nb\r\nEND\r\n");
    expect(h.send(producer, "get q\r\n")).toBe("END\r\n");
  });
});

describe("issue 12 with a frozen clock", () => {
  test("get q/touch renews the open message's lease; with nothing open it is a CLIENT_ERROR", () => {
    const h = harness({ openTimeoutMs: 1000 });
    const s = h.session();
    h.send(s, "set q 0 0 1\r\na\r\n");
    expect(h.send(s, "get q/touch\r\n")).toBe("CLIENT_ERROR nothing is open on that queue on this connection\r\n");
    expect(h.send(s, "get q/open\r\n")).toBe("VALUE q/open 0 1\r\na\r\nEND\r\n");
    h.advance(900);
    expect(h.send(s, "get q/touch\r\n")).toBe("END\r\n");
    h.advance(900); // 1800 ms after the open, 900 after the touch: still leased
    expireLeases(h.ctx, h.now());
    expect(h.ctx.store.detail("q", h.now())).toMatchObject({ open: 1 });
    h.advance(100);
    expireLeases(h.ctx, h.now());
    expect(h.ctx.store.detail("q", h.now())).toMatchObject({ open: 0 });
    expect(h.send(s, "get q/touch/open\r\nget q/touch/t=5\r\n")).toBe("CLIENT_ERROR bad command line format\r\n".repeat(2));
  });

  test("a delayed set and an abort with a delay follow the clock", () => {
    const h = harness();
    const s = h.session();
    expect(h.send(s, "set q/delay=1000 0 0 1\r\nd\r\nset q 0 0 1\r\nn\r\n")).toBe("STORED\r\nSTORED\r\n");
    expect(h.send(s, "get q/open\r\nget q/abort/delay=500\r\nget q\r\n")).toBe("VALUE q/open 0 1\r\nn\r\nEND\r\nEND\r\nEND\r\n");
    h.advance(500);
    expect(h.send(s, "get q\r\nget q\r\n")).toBe("VALUE q 0 1\r\nn\r\nEND\r\nEND\r\n");
    h.advance(500);
    expect(h.send(s, "get q\r\n")).toBe("VALUE q 0 1\r\nd\r\nEND\r\n");
  });
});
