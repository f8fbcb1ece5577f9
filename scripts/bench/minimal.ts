/**
 * The measured ceiling: the least a Bun memcache queue server can do per request. Held in memory,
 * no durability, no limits, no stats: `set` appends to a queue, `get <queue>` takes its head. It
 * parses just enough for `mcbench -m pair` and answers anything else with ERROR. `bun run bench`
 * runs it beside mcq, so what mcq loses against it is mcq's own per-request work, not Bun's.
 *
 *   bun scripts/bench/minimal.ts [-p PORT]     prints "minimal listening on 127.0.0.1:PORT"
 */
import { Fifo, runRequests, type Handlers, type Stored } from "./minimal-wire";

const args = process.argv.slice(2);
const port = args.includes("-p") ? Number(args[args.indexOf("-p") + 1]) : 0;

const queues = new Map<string, Fifo<Stored>>();
const handlers: Handlers = {
  set(queue, flagsText, body) {
    let q = queues.get(queue);
    if (q === undefined) queues.set(queue, (q = new Fifo()));
    q.push({ flagsText, body });
  },
  get: (queue) => queues.get(queue)?.take(),
};

interface State {
  /** Bytes of a request split across chunks. */
  rest: Buffer | null;
  /** Replies the socket did not take yet; reading waits for them (no unbounded output). */
  unsent: Buffer | null;
}

function send(socket: Bun.Socket<State>, data: Buffer): void {
  const n = socket.write(data);
  if (n < data.length) {
    socket.data.unsent = data.subarray(Math.max(n, 0));
    socket.pause();
  }
}

const server = Bun.listen<State>({
  hostname: "127.0.0.1",
  port,
  socket: {
    open(socket) {
      socket.data = { rest: null, unsent: null };
    },
    data(socket, chunk) {
      const state = socket.data;
      const input = state.rest === null ? chunk : Buffer.concat([state.rest, chunk]);
      const out: Buffer[] = [];
      const used = runRequests(input, out, handlers);
      state.rest = used === input.length ? null : Buffer.from(input.subarray(used));
      if (out.length === 1) send(socket, out[0]!);
      else if (out.length > 1) send(socket, Buffer.concat(out));
    },
    drain(socket) {
      const unsent = socket.data.unsent;
      if (unsent === null) return;
      socket.data.unsent = null;
      send(socket, unsent);
      if (socket.data.unsent === null) socket.resume();
    },
  },
});

console.log(`minimal listening on 127.0.0.1:${server.port}`);
process.on("SIGTERM", () => {
  server.stop(true);
  process.exit(0);
});
