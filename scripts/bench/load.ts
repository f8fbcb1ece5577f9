/**
 * The load generator of `bun run bench`, one process per run so it does not share a thread
 * with the orchestrator. It speaks three protocols with the same load shape, so every server
 * is driven alike: memcache (mcq, memcached), Redis lists (LPUSH/RPOP) and beanstalkd
 * (put; reserve-with-timeout 0 + delete).
 *
 *   bun scripts/bench/load.ts --proto memcache --port 22201 --mode pair --conns 50 --depth 16 --secs 3
 * prints one JSON line: { ops, secs, opsPerSec, p50us, p99us, errors }.
 *
 * Modes: pair (set then get, alternating), set, drain (gets until the queue is empty),
 * queues (pair over --queues queues). Each connection keeps --depth requests in flight.
 * --tls connects with TLS (any certificate accepted: it measures, it does not authenticate).
 */

export interface LoadOptions {
  proto: "memcache" | "redis" | "beanstalk";
  host: string;
  port: number;
  mode: "pair" | "set" | "drain" | "queues";
  conns: number;
  depth: number;
  secs: number;
  size: number;
  queues: number;
  prefix: string;
  tls?: boolean;
}

export interface LoadResult {
  ops: number;
  secs: number;
  opsPerSec: number;
  p50us: number;
  p99us: number;
  errors: number;
}

type Kind = "set" | "get" | "delete";

const CRLF = Buffer.from("\r\n");
const [S, E, V, D, I, R, T, DOLLAR, COLON] = ["S", "E", "V", "D", "I", "R", "T", "$", ":"].map((c) => c.charCodeAt(0));

/**
 * One connection: requests are prebuilt per queue and written in one batch per reply event;
 * replies are matched in order by their first bytes, with no string building.
 */
function runConnection(o: LoadOptions, index: number, deadline: number, result: { lat: number[]; errors: number; done: number }) {
  return new Promise<void>((resolve) => {
    const body = Buffer.alloc(o.size, 120);
    // Indexed by queue number, so no name is built per request (that showed in profiles).
    const requests: ({ set: Buffer; get: Buffer } | undefined)[] = [];
    const kinds: Kind[] = [];
    const sentAt: number[] = [];
    let head = 0; // index of the oldest request in flight
    let buf: Buffer = Buffer.alloc(0);
    let turn = 0;
    let stopping = false;
    let empty = false;
    let socket: Awaited<ReturnType<typeof Bun.connect>>;

    function prebuilt(n: number) {
      let r = requests[n];
      if (r === undefined) {
        const q = `${o.prefix}${n}`;
        if (o.proto === "memcache") {
          r = { set: Buffer.concat([Buffer.from(`set ${q} 0 0 ${o.size}\r\n`), body, CRLF]), get: Buffer.from(`get ${q}\r\n`) };
        } else if (o.proto === "redis") {
          r = {
            set: Buffer.concat([Buffer.from(`*3\r\n$5\r\nLPUSH\r\n$${q.length}\r\n${q}\r\n$${o.size}\r\n`), body, CRLF]),
            get: Buffer.from(`*2\r\n$4\r\nRPOP\r\n$${q.length}\r\n${q}\r\n`),
          };
        } else {
          // beanstalkd: the default tube is the one queue.
          r = { set: Buffer.concat([Buffer.from(`put 0 0 60 ${o.size}\r\n`), body, CRLF]), get: Buffer.from("reserve-with-timeout 0\r\n") };
        }
        requests[n] = r;
      }
      return r;
    }

    function fill(out: Buffer[]): void {
      const now = performance.now();
      while (!stopping && kinds.length - head < o.depth) {
        if (Date.now() >= deadline || (o.mode === "drain" && empty)) {
          stopping = true;
          break;
        }
        const kind: Kind = o.mode === "set" ? "set" : o.mode === "drain" ? "get" : turn % 2 === 0 ? "set" : "get";
        const q = o.mode === "queues" ? (index + (turn >> 1)) % o.queues : 0;
        turn++;
        kinds.push(kind);
        sentAt.push(now);
        out.push(prebuilt(q)[kind as "set" | "get"]);
      }
    }

    function flush(out: Buffer[]): void {
      if (out.length > 0) socket.write(out.length === 1 ? out[0]! : Buffer.concat(out));
      if (stopping && kinds.length === head) socket.end();
    }

    /** Length of the complete reply at the start of buf (0: not all there), whether it hit, a job id. */
    function reply(kind: Kind): [number, boolean, string?] {
      const eol = buf.indexOf(CRLF);
      if (eol < 0) return [0, false];
      const c = buf[0];
      if (o.proto === "memcache") {
        if (c === S) return [eol + 2, true];
        if (c === E) return [eol + 2, false];
        const total = eol + 2 + o.size + 2 + 5;
        return buf.length >= total ? [total, c === V] : [0, false];
      }
      if (o.proto === "redis") {
        if (c === COLON) return [eol + 2, true];
        if (c !== DOLLAR || buf[1] === 45 /* - */) return [eol + 2, false];
        const total = eol + 2 + o.size + 2;
        return buf.length >= total ? [total, true] : [0, false];
      }
      if (c === R) {
        const total = eol + 2 + o.size + 2;
        return buf.length >= total ? [total, true, buf.toString("latin1", 9, buf.indexOf(32, 9))] : [0, false];
      }
      return [eol + 2, c === I || c === D || (kind === "get" && c !== T)];
    }

    function onData(chunk: Buffer): void {
      buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk]);
      const out: Buffer[] = [];
      const now = performance.now();
      while (head < kinds.length) {
        const kind = kinds[head]!;
        const [length, hit, id] = reply(kind);
        if (length === 0) break;
        buf = buf.subarray(length);
        const at = sentAt[head]!;
        head++;
        if (id !== undefined) {
          // beanstalkd: a reserved job is deleted before its get counts as done.
          kinds.push("delete");
          sentAt.push(at);
          out.push(Buffer.from(`delete ${id}\r\n`));
          continue;
        }
        if (kind === "get" && !hit) {
          if (o.mode === "drain") empty = true;
        } else if (!hit) result.errors++;
        result.lat.push(now - at);
        result.done++;
      }
      if (head > 4096) {
        kinds.splice(0, head);
        sentAt.splice(0, head);
        head = 0;
      }
      fill(out);
      flush(out);
    }

    void Bun.connect({
      hostname: o.host,
      port: o.port,
      tls: o.tls === true ? { rejectUnauthorized: false } : undefined,
      socket: {
        open(s) {
          socket = s;
          const out: Buffer[] = [];
          fill(out);
          flush(out);
        },
        data: (_s, chunk) => onData(chunk),
        close: () => resolve(),
        error: () => {
          result.errors++;
          resolve();
        },
        connectError: () => {
          result.errors++;
          resolve();
        },
      },
    });
  });
}

export async function runLoad(o: LoadOptions): Promise<LoadResult> {
  const result = { lat: [] as number[], errors: 0, done: 0 };
  const start = performance.now();
  const deadline = Date.now() + o.secs * 1000;
  await Promise.all(Array.from({ length: o.conns }, (_, i) => runConnection(o, i, deadline, result)));
  const secs = (performance.now() - start) / 1000;
  const lat = result.lat.sort((a, b) => a - b);
  const pct = (p: number) => Math.round((lat[Math.min(lat.length - 1, Math.floor(lat.length * p))] ?? 0) * 1000);
  return { ops: result.done, secs, opsPerSec: Math.round(result.done / secs), p50us: pct(0.5), p99us: pct(0.99), errors: result.errors };
}

if (import.meta.main) {
  const argv = process.argv.slice(2);
  const get = (flag: string, fallback: string) => (argv.includes(flag) ? argv[argv.indexOf(flag) + 1]! : fallback);
  const options: LoadOptions = {
    proto: get("--proto", "memcache") as LoadOptions["proto"],
    host: get("--host", "127.0.0.1"),
    port: Number(get("--port", "22201")),
    mode: get("--mode", "pair") as LoadOptions["mode"],
    conns: Number(get("--conns", "1")),
    depth: Number(get("--depth", "1")),
    secs: Number(get("--secs", "3")),
    size: Number(get("--size", "100")),
    queues: Number(get("--queues", "1000")),
    prefix: get("--prefix", "bench"),
    tls: argv.includes("--tls"),
  };
  console.log(JSON.stringify(await runLoad(options)));
}
