/**
 * `mcq stats --addr host:port`: asks a running server for `stats queue` and each queue's detail,
 * and prints them as a table.
 */
export async function queueTable(host: string, port: number): Promise<string> {
  let received = "";
  let wake: () => void = () => {};
  let failure: Error | null = null;
  const socket = await Bun.connect({
    hostname: host,
    port,
    socket: {
      data(_s, chunk) {
        received += chunk.toString("latin1");
        wake();
      },
      error(_s, e) {
        failure = e;
        wake();
      },
    },
  });
  async function ask(command: string): Promise<string[]> {
    received = "";
    socket.write(command);
    while (!received.endsWith("END\r\n") && !received.endsWith("ERROR\r\n") && failure === null) {
      await new Promise<void>((ok) => (wake = ok));
    }
    if (failure !== null) throw failure;
    return received.split("\r\n").filter((l) => l.startsWith("STAT "));
  }
  try {
    const names = (await ask("stats queue\r\n")).map((l) => l.slice(5, l.lastIndexOf(" ")));
    const header = ["queue", "items", "bytes", "total", "fetched", "open", "oldest"];
    const rows = [header];
    for (const name of names) {
      const detail = Object.fromEntries((await ask(`stats queue ${name}\r\n`)).map((l) => l.slice(5).split(" ")));
      const age = Number(detail.oldest_age_ms ?? 0);
      rows.push([name, detail.items, detail.bytes, detail.total, detail.fetched, detail.open, age ? `${(age / 1000).toFixed(1)}s` : "-"]);
    }
    const widths = header.map((_, i) => Math.max(...rows.map((r) => String(r[i]).length)));
    return rows
      .map((r) => r.map((cell, i) => (i === 0 ? String(cell).padEnd(widths[i]!) : String(cell).padStart(widths[i]!))).join("  "))
      .join("\n") + `\n${names.length} queue${names.length === 1 ? "" : "s"}\n`;
  } finally {
    socket.end();
  }
}
