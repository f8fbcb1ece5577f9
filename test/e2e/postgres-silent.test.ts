/**
 * A Postgres that accepts the connection, answers the startup, and then says nothing (a partition
 * without a reset, a frozen server behind a proxy): the node's reconnect and its reads of the
 * counters are bounded by the store's timeout (5 s), then it serves again once the server answers
 * (review 8 R3). MCQ_TEST_PG, see test/pg.ts.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { dropSchemas, freshSchema, havePostgres, PG_URL, pgStoreUrl } from "../pg";
import { set, startServer, stopAll, tempDir } from "./harness";

const schemas: string[] = [];

/** The store's timeout (main.ts POSTGRES_TIMEOUT_MS): what every wait on Postgres is bounded by. */
const BOUND_MS = 5000;

/**
 * A relay to MCQ_TEST_PG that can go silent: once muted, what the server sends is dropped on the
 * connections it had, and on new ones after their startup (the first ReadyForQuery), for good:
 * as a server that stopped answering and never resets the connection.
 */
function silentRelay() {
  const target = new URL(PG_URL!);
  type Side = { peer: import("bun").Socket<Side> | null; queued: Uint8Array[]; client: boolean; muted: boolean; started: boolean; late: boolean };
  const open = new Set<import("bun").Socket<Side>>();
  let muting = false;
  const READY = Buffer.from([0x5a, 0, 0, 0, 5]); // ReadyForQuery: the startup is over
  const relay = Bun.listen<Side>({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      open(client) {
        client.data = { peer: null, queued: [], client: true, muted: muting, started: false, late: muting };
        open.add(client);
        void Bun.connect<Side>({
          hostname: target.hostname,
          port: Number(target.port || 5432),
          socket: {
            open(up) {
              up.data = { peer: client, queued: [], client: false, muted: false, started: false, late: false };
              client.data.peer = up;
              for (const b of client.data.queued.splice(0)) up.write(b);
            },
            data(up, bytes) {
              const c = client.data;
              if (c.muted && c.started) return; // said nothing
              if (!c.started && Buffer.from(bytes).includes(READY)) c.started = true;
              client.write(bytes);
            },
            close: () => void client.end(),
          },
        }).catch(() => client.end());
      },
      data(client, bytes) {
        if (client.data.peer === null) client.data.queued.push(bytes.slice());
        else client.data.peer.write(bytes);
      },
      close(client) {
        open.delete(client);
        client.data.peer?.end();
      },
    },
  });
  return {
    url(schema: string) {
      const u = new URL(pgStoreUrl(schema));
      u.host = `127.0.0.1:${relay.port}`;
      return u.toString();
    },
    /** From now on the server says nothing, on every connection. */
    mute() {
      muting = true;
      for (const c of open) c.data.muted = true;
    },
    /** New connections are served again; muted ones stay silent. */
    unmute: () => void (muting = false),
    /** Connections muted that the node still holds open. */
    mutedOpen: () => [...open].filter((c) => c.data.muted).length,
    /** Connections made while muted, past their startup, that the node still holds open: a reconnect stuck. */
    stuck: () => [...open].filter((c) => c.data.late && c.data.started).length,
    stop: () => relay.stop(true),
  };
}

/** Waits for `cond` (checked every 50 ms), up to `ms`: false if it never held. */
async function until(cond: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) return false;
    await Bun.sleep(50);
  }
  return true;
}

if (havePostgres("a silent Postgres")) {
  afterAll(async () => {
    await stopAll();
    await dropSchemas(schemas);
  });

  describe("a Postgres that goes silent", () => {
    test("a stats on an idle node, and a reconnect to a server that answers the startup and then nothing, are bounded; the node serves again after", async () => {
      const schema = freshSchema("silent");
      schemas.push(schema);
      const relay = silentRelay();
      const node = await startServer(["--store", relay.url(schema)], join(tempDir(), "a"));
      const c = await node.connect();
      expect(await c.call(set("q", "one"))).toBe("STORED\r\n");
      relay.mute();
      // The node is idle: a stats request reads the counters again (refresh) on the connection that went silent.
      let t0 = performance.now();
      expect(await c.call("stats queue q\r\n")).toContain("STAT items 1\r\n"); // before: no reply until TCP gives up
      expect(performance.now() - t0).toBeLessThan(BOUND_MS + 2000);
      expect(performance.now() - t0).toBeGreaterThanOrEqual(BOUND_MS - 100);
      // The next batch fails on the silent connection, or on a reconnect to a server that answers the startup only.
      t0 = performance.now();
      // The batch's timer or the walk's bound, whichever fires first: both are the store's timeout.
      expect(await c.call(set("q", "two"))).toMatch(/^SERVER_ERROR Postgres: (no writable host \(127\.0\.0\.1:\d+: )?no answer within 5000 ms\)?\r\n$/);
      expect(performance.now() - t0).toBeLessThan(BOUND_MS + 2000);
      // The server answers again. The node's reconnects (an idle node reads the counters every second)
      // give up on the silent connections and close them (before: one stayed pending for good, and
      // every later batch waited behind it).
      expect(await until(() => relay.stuck() > 0, BOUND_MS + 2000)).toBe(true);
      relay.unmute();
      expect(await until(() => relay.mutedOpen() === 0, BOUND_MS + 2000)).toBe(true);
      expect(await c.call(set("q", "three"))).toBe("STORED\r\n");
      expect(await c.call("get q\r\nget q\r\nget q\r\n")).toBe("VALUE q 0 3\r\none\r\nEND\r\nVALUE q 0 5\r\nthree\r\nEND\r\nEND\r\n");
      expect(node.stderr()).toContain("no answer within 5000 ms");
      await node.kill();
      relay.stop();
    }, 60_000);

    test("a silent host beside the primary in the host list: the walk does not wait for it past a second once the primary answered (review 11a F3)", async () => {
      const schema = freshSchema("silent");
      schemas.push(schema);
      const relay = silentRelay();
      relay.mute(); // every connection to it answers the startup, then nothing
      const silent = new URL(relay.url(schema)).host;
      const url = relay.url(schema).replace(`@${silent}/`, `@${new URL(PG_URL!).host},${silent}/`);
      const t0 = performance.now();
      const node = await startServer(["--store", url], join(tempDir(), "a"));
      // Before: every walk, the one at start too, waited the whole bound for the silent host's answer.
      expect(performance.now() - t0).toBeLessThan(BOUND_MS);
      const c = await node.connect();
      expect(await c.call(set("q", "one") + "get q\r\n")).toBe("STORED\r\nVALUE q 0 3\r\none\r\nEND\r\n");
      await node.kill();
      relay.stop();
    }, 30_000);
  });
}
