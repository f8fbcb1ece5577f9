export {};
/**
 * Queues N messages of 100 bytes as fast as one connection can: batches of noreply sets, each
 * ended by `version` so the client never runs ahead of the server by more than a batch.
 *   bun scripts/bench/fill.ts <port> <queue> <count>
 */
const [port, queue, count] = [Number(process.argv[2]), process.argv[3]!, Number(process.argv[4])];
const BATCH = 10_000;
const one = `set ${queue} 0 0 100 noreply\r\n${"f".repeat(100)}\r\n`;
const full = Buffer.from(one.repeat(BATCH) + "version\r\n");

let waiting: (() => void) | null = null;
let seen = "";
const socket = await Bun.connect({
  hostname: "127.0.0.1",
  port,
  socket: {
    data(_s, chunk) {
      seen += chunk.toString();
      if (seen.includes("VERSION")) {
        seen = "";
        waiting?.();
      }
    },
  },
});
const started = performance.now();
for (let sent = 0; sent < count; sent += BATCH) {
  const n = Math.min(BATCH, count - sent);
  const done = new Promise<void>((ok) => (waiting = ok));
  socket.write(n === BATCH ? full : Buffer.from(one.repeat(n) + "version\r\n"));
  await done;
  if ((sent / BATCH) % 100 === 99) process.stderr.write(`${sent + n} queued\n`);
}
process.stderr.write(`${count} queued in ${((performance.now() - started) / 1000).toFixed(1)} s\n`);
socket.end();
