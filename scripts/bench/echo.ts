/**
 * The platform's own TLS cost, for `bun run bench --tls`: the least a Bun server can do for the
 * pair load, over a plain and a TLS listener in one process. It answers `set` with STORED and
 * `get` with one fixed 100-byte VALUE, storing nothing, and writes one buffer per data event, as
 * mcq writes one per connection per turn. Its TLS to plain ratio, with the same load generator
 * in the same run, bounds what mcq's can be.
 *
 *   bun scripts/bench/echo.ts <cert.pem> <key.pem>   prints "plain <port> tls <port>"
 */
export {};

const [certPath, keyPath] = process.argv.slice(2);
if (certPath === undefined || keyPath === undefined) throw new Error("usage: echo.ts <cert.pem> <key.pem>");

const STORED = Buffer.from("STORED\r\n");
const BODY = "x".repeat(100);

type State = { rest: Buffer; unsent: Buffer | null };
type Conn = { data: State; write(b: Buffer): number };

/** Answers every complete request in the buffer; returns the replies and what is left. */
function answer(buf: Buffer): { out: Buffer[]; rest: Buffer } {
  const out: Buffer[] = [];
  let at = 0;
  for (;;) {
    const eol = buf.indexOf("\r\n", at);
    if (eol < 0) break;
    const line = buf.toString("latin1", at, eol);
    if (line.startsWith("set ")) {
      const bytes = Number(line.slice(line.lastIndexOf(" ") + 1));
      if (buf.length < eol + 2 + bytes + 2) break;
      out.push(STORED);
      at = eol + 2 + bytes + 2;
    } else {
      const queue = line.slice(4);
      out.push(Buffer.from(`VALUE ${queue} 0 ${BODY.length}\r\n${BODY}\r\nEND\r\n`, "latin1"));
      at = eol + 2;
    }
  }
  return { out, rest: buf.subarray(at) };
}

/** Writes what the socket takes; the rest waits for drain (a short write must not lose replies). */
function send(s: Conn, bytes: Buffer): void {
  const n = Math.max(s.write(bytes), 0);
  s.data.unsent = n < bytes.length ? bytes.subarray(n) : null;
}

const socket = {
  open(s: Conn) {
    s.data = { rest: Buffer.alloc(0), unsent: null };
  },
  data(s: Conn, chunk: Buffer) {
    const buf = s.data.rest.length === 0 ? chunk : Buffer.concat([s.data.rest, chunk]);
    const { out, rest } = answer(buf);
    s.data.rest = Buffer.from(rest);
    if (out.length === 0) return;
    const bytes = Buffer.concat(s.data.unsent === null ? out : [s.data.unsent, ...out]);
    if (s.data.unsent === null) send(s, bytes);
    else s.data.unsent = bytes;
  },
  drain(s: Conn) {
    if (s.data.unsent !== null) send(s, s.data.unsent);
  },
};

const plain = Bun.listen<State>({ hostname: "127.0.0.1", port: 0, socket });
const tls = Bun.listen<State>({
  hostname: "127.0.0.1",
  port: 0,
  socket,
  tls: { cert: await Bun.file(certPath).text(), key: await Bun.file(keyPath).text() },
});
console.log(`plain ${plain.port} tls ${tls.port}`);
