export {};
/**
 * One client that sets a 1 MB message and takes it back, over and over, for `secs` seconds:
 * the neighbour that `bun run bench --large` runs beside small gets to see their p99.
 *   bun scripts/bench/large.ts <port> <secs>
 */
const port = Number(process.argv[2]);
const secs = Number(process.argv[3] ?? 5);
const big = Buffer.alloc(1024 * 1024, 98);
const request = Buffer.concat([Buffer.from(`set large 0 0 ${big.length}\r\n`), big, Buffer.from("\r\nget large\r\n")]);
const deadline = Date.now() + secs * 1000;
let pairs = 0;
let tail = "";
await new Promise<void>((done) => {
  void Bun.connect({
    hostname: "127.0.0.1",
    port,
    socket: {
      open: (s) => void s.write(request),
      data(s, chunk) {
        // The reply ends with the get's END; only the last bytes are needed to see it.
        tail = (tail + chunk.toString("latin1")).slice(-5);
        if (tail !== "END\r\n") return;
        tail = "";
        pairs++;
        if (Date.now() < deadline) s.write(request);
        else {
          s.end();
          done();
        }
      },
      close: () => done(),
    },
  });
});
console.log(JSON.stringify({ pairs, mbPerSec: Math.round((2 * pairs) / secs) }));
