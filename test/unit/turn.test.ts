/**
 * The turn and the connection over a real SQLite store, with sockets faked so a test decides
 * how many bytes each write takes: a message whose reply never reached the socket is not
 * consumed, whether its batch had committed or not.
 */
import { afterEach, describe, expect, test } from "bun:test";
import type { Socket } from "bun";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createBatch } from "../../src/batch";
import { DEFAULTS } from "../../src/config";
import { createConn, type Conn } from "../../src/conn";
import { createWaiters, type Context } from "../../src/context";
import { createLogger } from "../../src/log";
import { createFramer } from "../../src/protocol/framer";
import { createSession } from "../../src/session";
import { createStats } from "../../src/stats";
import { openSqliteStore } from "../../src/store/sqlite";
import { createTurns } from "../../src/turn";

const dirs: string[] = [];
afterEach(() => dirs.splice(0).forEach((d) => rmSync(d, { recursive: true, force: true })));

function setup() {
  const dir = mkdtempSync(join(tmpdir(), "mcq-turn-"));
  dirs.push(dir);
  const store = openSqliteStore(dir, { sync: "off", cacheMb: 8 });
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
  const turns = createTurns(ctx, () => "");
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
