/**
 * The measured ceiling: the least a Bun memcache queue server can do per request. Held in memory,
 * no durability, no limits, no stats: `set` appends to a queue, `get <queue>` takes its head. It
 * parses just enough for `mcbench -m pair` and answers anything else with ERROR. `bun run bench`
 * runs it beside mcq, so what mcq loses against it is mcq's own per-request work, not Bun's.
 *
 *   bun scripts/bench/minimal.ts [-p PORT]     prints "minimal listening on 127.0.0.1:PORT"
 */
const args = process.argv.slice(2);
const port = args.includes("-p") ? Number(args[args.indexOf("-p") + 1]) : 0;

interface Message {
  flags: string;
  body: Buffer;
}

/** A FIFO with a moving head: shift() on a long array is O(n). */
class Queue {
  items: Message[] = [];
  head = 0;
  push(m: Message): void {
    this.items.push(m);
  }
  take(): Message | undefined {
    if (this.head === this.items.length) return undefined;
    const m = this.items[this.head++]!;
    if (this.head === this.items.length) (this.items = []), (this.head = 0);
    return m;
  }
}

const queues = new Map<string, Queue>();
const STORED = Buffer.from("STORED\r\n");
const END = Buffer.from("END\r\n");
const ERROR = Buffer.from("ERROR\r\n");

interface State {
  /** Bytes of a request split across chunks. */
  rest: Buffer | null;
  /** Replies the socket did not take yet; reading waits for them (no unbounded output). */
  unsent: Buffer | null;
}

/** Parses every complete request in `input`; returns the replies and how many bytes were used. */
function run(input: Buffer, out: Buffer[]): number {
  let at = 0;
  while (at < input.length) {
    const eol = input.indexOf("\r\n", at);
    if (eol < 0) break;
    const line = input.toString("latin1", at, eol);
    const words = line.split(" ");
    if (words[0] === "set" && words.length >= 5) {
      const bytes = Number(words[4]);
      const end = eol + 2 + bytes;
      if (!Number.isInteger(bytes) || bytes < 0) {
        out.push(ERROR);
        at = eol + 2;
        continue;
      }
      if (input.length < end + 2) break; // the body is not all here yet
      let q = queues.get(words[1]!);
      if (q === undefined) queues.set(words[1]!, (q = new Queue()));
      // A copy: the chunk is Bun's and is reused after this callback.
      q.push({ flags: words[2]!, body: Buffer.from(input.subarray(eol + 2, end)) });
      out.push(STORED);
      at = end + 2;
    } else if (words[0] === "get" && words.length === 2) {
      const m = queues.get(words[1]!)?.take();
      if (m !== undefined) {
        out.push(Buffer.from(`VALUE ${words[1]} ${m.flags} ${m.body.length}\r\n`), m.body, Buffer.from("\r\nEND\r\n"));
      } else out.push(END);
      at = eol + 2;
    } else {
      out.push(ERROR);
      at = eol + 2;
    }
  }
  return at;
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
      const used = run(input, out);
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
