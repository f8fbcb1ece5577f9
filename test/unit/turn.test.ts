/**
 * The turn and the connection over a real SQLite store, with sockets faked so a test decides
 * how many bytes each write takes: a message whose reply never reached the socket is not
 * consumed, whether its batch had committed or not.
 */
import { afterEach, describe, expect, test } from "bun:test";
import type { Socket } from "bun";
import { rmSync } from "node:fs";
import { tempDir } from "../e2e/harness";
import { createBatch } from "../../src/batch";
import { DEFAULTS } from "../../src/config";
import { createConn, type Conn } from "../../src/conn";
import { createWaiters, type Context } from "../../src/context";
import { createLogger } from "../../src/log";
import { createFramer } from "../../src/protocol/framer";
import { createSession } from "../../src/session";
import { createStats } from "../../src/stats";
import { createMemoryStore } from "../../src/store/memory";
import { openSqliteStore } from "../../src/store/sqlite";
import { StoreError, type QueueStore } from "../../src/store/store";
import { BATCH_MAX_REQUESTS, createTurns } from "../../src/turn";

const dirs: string[] = [];
afterEach(() => dirs.splice(0).forEach((d) => rmSync(d, { recursive: true, force: true })));

function sqlite(): QueueStore {
  const dir = tempDir("mcq-turn-");
  dirs.push(dir);
  return openSqliteStore(dir, { sync: "off", cacheMb: 8 });
}

/**
 * The memory store as a networked store behaves: takes and commits answer after a round trip
 * (a timer), and `failing.take` makes the next take fail.
 */
function remote(failing = { take: false }): QueueStore {
  const store = createMemoryStore();
  const trip = <T>(fn: () => T) =>
    new Promise<T>((ok, fail) =>
      setTimeout(() => {
        if (failing.take) {
          failing.take = false;
          fail(new StoreError("connection lost"));
        } else ok(fn());
      }, 1),
    );
  return {
    ...store,
    dequeue: (q, now) => trip(() => store.dequeue(q, now)),
    open: (q, now) => trip(() => store.open(q, now)),
    peek: (q, now) => trip(() => store.peek(q, now)),
    commit: () => new Promise<void>((ok) => setTimeout(() => ok(store.commit()), 1)),
  };
}

function setup(make: () => QueueStore = sqlite) {
  const store = make();
  const ctx: Context = {
    store,
    stats: createStats(),
    config: { ...DEFAULTS },
    batch: createBatch(store, () => {}),
    log: createLogger(0, () => {}),
    waiters: createWaiters(),
    sessions: new Set(),
    now: () => 1_000_000,
    startedAt: 0,
    version: "1.0.0",
    resume: (s) => turns.resume(conns.find((c) => c.session === s)!),
    retry: () => {},
    stopping: false,
  };
  const turns = createTurns(ctx, () => "", (conn) => turns.closed(conn));
  const conns: Conn[] = [];
  /** A connection whose socket takes at most `budget.left` bytes; `sent` is what it took. */
  function connect(budget = { left: Infinity }) {
    const sent: Buffer[] = [];
    const socket = {
      write(b: Uint8Array) {
        const n = Math.min(b.length, budget.left);
        budget.left -= n;
        sent.push(Buffer.from(b.subarray(0, n)));
        return n;
      },
      pause() {},
      resume() {},
      end() {},
    } as unknown as Socket<Conn>;
    const conn = createConn(socket, createSession(), createFramer({ maxLine: 8192, maxBody: 1 << 20 }), 0);
    conns.push(conn);
    ctx.sessions.add(conn.session);
    const send = (text: string) => {
      conn.framer.push(Buffer.from(text, "latin1"));
      turns.run(conn);
    };
    return { conn, send, budget, sent: () => Buffer.concat(sent).toString("latin1") };
  }
  return { ctx, store, turns, connect };
}

describe("a reply that never reached the socket consumes nothing", () => {
  test("committed, then stuck in unsent output: the message goes back at its place", () => {
    const { store, turns, connect } = setup();
    const producer = connect();
    producer.send("set q 0 0 2\r\nm1\r\nset q 0 0 2\r\nm2\r\n");
    turns.turnNow();
    expect(producer.sent()).toBe("STORED\r\nSTORED\r\n");
    const reader = connect({ left: 0 });
    reader.send("get q\r\n");
    turns.turnNow();
    expect(reader.conn.unsentBytes).toBe("VALUE q 0 2\r\nm1\r\nEND\r\n".length);
    expect(store.detail("q", 0)).toMatchObject({ items: 1, fetched: 1 });
    turns.closed(reader.conn);
    turns.turnNow();
    expect(store.detail("q", 0)).toMatchObject({ items: 2, total: 2, fetched: 0 });
    const next = connect();
    next.send("get q\r\nget q\r\n");
    turns.turnNow();
    expect(next.sent()).toBe("VALUE q 0 2\r\nm1\r\nEND\r\nVALUE q 0 2\r\nm2\r\nEND\r\n");
  });

  test("a partial write: the VALUE the socket took is delivered, the rest goes back", () => {
    const { store, turns, connect } = setup();
    const producer = connect();
    producer.send("set q 0 0 2\r\nm1\r\nset q 0 0 2\r\nm2\r\n");
    turns.turnNow();
    const first = "VALUE q 0 2\r\nm1\r\n";
    const reader = connect({ left: first.length + 3 });
    reader.send("get q q\r\n");
    turns.turnNow();
    expect(reader.sent()).toBe(first + "VAL");
    turns.closed(reader.conn);
    turns.turnNow();
    expect(store.detail("q", 0)).toMatchObject({ items: 1, total: 2, fetched: 1 });
    const next = connect();
    next.send("get q\r\n");
    turns.turnNow();
    expect(next.sent()).toBe("VALUE q 0 2\r\nm2\r\nEND\r\n");
  });

  test("taken in the open batch, closed before its commit: the batch nets to nothing", () => {
    const { store, turns, connect } = setup();
    const producer = connect();
    producer.send("set q 0 0 2\r\nm1\r\n");
    turns.turnNow();
    const reader = connect();
    reader.send("get q\r\n"); // runs at once, in the open batch
    turns.closed(reader.conn);
    turns.turnNow();
    expect(reader.sent()).toBe("");
    expect(store.detail("q", 0)).toMatchObject({ items: 1, total: 1, fetched: 0 });
  });
});

describe("a store that answers takes and commits later", () => {
  /** Runs turns until `done` holds (each awaits the store's round trips). */
  async function until(turns: { turnNow(): void }, done: () => boolean): Promise<void> {
    for (let i = 0; i < 500 && !done(); i++) {
      turns.turnNow();
      await Bun.sleep(2);
    }
    expect(done()).toBe(true);
  }

  test("gets, multi-key gets and a blocking get woken by a set: each one reply, in order", async () => {
    const { turns, connect } = setup(() => remote());
    const producer = connect();
    producer.send("set a 0 0 2\r\na1\r\nset a 0 0 2\r\na2\r\nset b 0 0 2\r\nb1\r\n");
    await until(turns, () => producer.sent() === "STORED\r\n".repeat(3));
    const reader = connect();
    reader.send("get a\r\nget a/peek b none\r\nversion\r\n");
    const want = "VALUE a 0 2\r\na1\r\nEND\r\nVALUE a/peek 0 2\r\na2\r\nVALUE b 0 2\r\nb1\r\nEND\r\nVERSION 1.0.0\r\n";
    await until(turns, () => reader.sent() === want);
    const waiter = connect();
    waiter.send("get w/t=5000\r\n");
    await until(turns, () => waiter.conn.session.get?.state === "parked");
    producer.send("set w 0 0 2\r\nw1\r\n");
    await until(turns, () => waiter.sent() === "VALUE w/t=5000 0 2\r\nw1\r\nEND\r\n");
    expect(producer.sent()).toBe("STORED\r\n".repeat(4));
  });

  test("a take that fails later answers one SERVER_ERROR and takes nothing", async () => {
    const failing = { take: false };
    const { store, turns, connect } = setup(() => remote(failing));
    const c = connect();
    c.send("set q 0 0 2\r\nm1\r\n");
    await until(turns, () => c.sent() === "STORED\r\n");
    failing.take = true;
    c.send("get q\r\nversion\r\n");
    await until(turns, () => c.sent() === "STORED\r\nSERVER_ERROR connection lost\r\nVERSION 1.0.0\r\n");
    expect(store.detail("q", 0)).toMatchObject({ items: 1, fetched: 0 });
  });

  test("a connection that closes while its take is in flight: the message goes back", async () => {
    const { store, turns, connect } = setup(() => remote());
    const c = connect();
    c.send("set q 0 0 2\r\nm1\r\nset r 0 0 2\r\nr1\r\n");
    await until(turns, () => c.sent() === "STORED\r\nSTORED\r\n");
    const gone = connect();
    gone.send("get q r/open\r\n");
    turns.closed(gone.conn);
    await until(turns, () => store.detail("q", 0)?.fetched === 0 && store.detail("q", 0)?.items === 1);
    await until(turns, () => store.detail("r", 0)?.open === 0);
    c.send("get q r\r\n");
    await until(turns, () => c.sent().endsWith("VALUE q 0 2\r\nm1\r\nVALUE r 0 2\r\nr1\r\nEND\r\n"));
    expect(gone.sent()).toBe("");
  });
});

describe("two batches in flight", () => {
  /** A memory store whose commits land when the test says: `landings` resolves or rejects them in order. */
  function deferred() {
    const store = createMemoryStore();
    const pending: { ok: () => void; fail: (e: Error) => void }[] = [];
    const wrapped: QueueStore = {
      ...store,
      commit: () =>
        new Promise<void>((ok, fail) => pending.push({ ok: () => ok(store.commit()), fail })),
    };
    return { store: wrapped, pending };
  }
  const settleTurns = async (turns: { turnNow(): void }) => {
    for (let i = 0; i < 5; i++) {
      turns.turnNow();
      await Bun.sleep(1);
    }
  };

  test("the next batch runs while one commits; replies leave in order, each once its batch is durable", async () => {
    const d = deferred();
    const { turns, connect, ctx } = setup(() => d.store);
    const c = connect();
    c.send("set q 0 0 1\r\na\r\n");
    turns.turnNow();
    expect(ctx.batch.inFlight()).toBe(1);
    c.send("get q\r\n"); // runs now, in the next batch, while the first commits
    turns.turnNow();
    expect(ctx.batch.inFlight()).toBe(2);
    c.send("set q 0 0 1\r\nb\r\n");
    turns.turnNow(); // a third batch waits: two are in flight
    expect(d.pending.length).toBe(2);
    d.pending[1]!.ok(); // the second lands first: it is durable only after the first
    await settleTurns(turns);
    expect(c.sent()).toBe("");
    d.pending[0]!.ok();
    await settleTurns(turns);
    // The third batch ran once one landed (this fake's first commit saved its set too).
    d.pending[2]?.ok();
    await settleTurns(turns);
    expect(c.sent()).toBe("STORED\r\nVALUE q 0 1\r\na\r\nEND\r\nSTORED\r\n");
  });

  test("a batch that fails takes the later one with it: one SERVER_ERROR each, nothing taken", async () => {
    const d = deferred();
    const { store, turns, connect } = setup(() => d.store);
    const c = connect();
    c.send("set q 0 0 1\r\na\r\n");
    turns.turnNow();
    d.pending[0]!.ok();
    await settleTurns(turns);
    expect(c.sent()).toBe("STORED\r\n");
    c.send("set q 0 0 1\r\nb\r\n");
    turns.turnNow();
    c.send("get q\r\n");
    turns.turnNow();
    d.pending[1]!.fail(new StoreError("connection lost"));
    await settleTurns(turns);
    expect(c.sent()).toBe("STORED\r\nSERVER_ERROR connection lost\r\nSERVER_ERROR connection lost\r\n");
    expect(store.detail("q", 0)).toMatchObject({ items: 1, total: 1, fetched: 0 });
  });
  test("a flood while a batch is in flight: the open batch stops at its bound, and the one left out runs first", async () => {
    const d = deferred();
    const sets = new Map<number, number>(); // sets run into each batch, by its number
    const store: QueueStore = {
      ...d.store,
      maxInFlight: 1,
      enqueue: (...args) => {
        const epoch = ctx.batch.epoch();
        sets.set(epoch, (sets.get(epoch) ?? 0) + 1);
        return d.store.enqueue(...args);
      },
    };
    const { turns, connect, ctx } = setup(() => store);
    const open = () => sets.get(ctx.batch.epoch()) ?? 0;
    const [a, b] = [connect(), connect()];
    a.send("set q 0 0 1\r\nx\r\n");
    turns.turnNow();
    expect(ctx.batch.inFlight()).toBe(1);
    const n = BATCH_MAX_REQUESTS + 2000;
    const chunk = `set q 0 0 1000\r\n${"y".repeat(1000)}\r\n`.repeat(50); // 50 sets a data event
    for (let i = 0; i < n; i += 50) a.send(chunk); // the 2,000 left over: 2 MB, more than one request's worth
    expect(open()).toBe(BATCH_MAX_REQUESTS);
    expect(a.conn.paused).toBe(true); // its reading waits for the batch
    b.send("set r 0 0 1\r\nz\r\n");
    expect(open()).toBe(BATCH_MAX_REQUESTS); // b waits its turn
    for (let i = 0; i < 100 && a.sent().length < (n + 1) * 8; i++) {
      d.pending.splice(0).forEach((p) => p.ok());
      await Bun.sleep(1);
      turns.turnNow();
    }
    expect(a.sent()).toBe("STORED\r\n".repeat(n + 1));
    expect(b.sent()).toBe("STORED\r\n");
    const sizes = [...sets.values()];
    expect(Math.max(...sizes)).toBe(BATCH_MAX_REQUESTS);
    expect(sizes.reduce((x, y) => x + y)).toBe(n + 2);
    // b, left out of the full batch, ran in the next one, ahead of a's next share.
    expect(sizes.slice(0, 3)).toEqual([1, BATCH_MAX_REQUESTS, 1 + 1024]);
    expect(d.store.detail("q", 0)).toMatchObject({ items: n + 1 });
    expect(a.conn.paused).toBe(false);
  });
});
