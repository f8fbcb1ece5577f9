/**
 * `mcq stats [--addr host:port | -s <socket>]`: asks a running server for `stats queue` and each
 * queue's detail, and prints them as a table.
 */
import type { SocketHandler } from "bun";
import { reason } from "../errors";
import { ToolError } from "./datadir";

export type Target = { hostname: string; port: number } | { unix: string };

export const describeTarget = (t: Target) => ("unix" in t ? t.unix : `${t.hostname}:${t.port}`);

export async function queueTable(target: Target): Promise<string> {
  let received = "";
  let wake: () => void = () => {};
  let failure: Error | null = null;
  const where = describeTarget(target);
  const handlers: SocketHandler = {
    data(_s, chunk) {
      received += chunk.toString("latin1");
      wake();
    },
    error(_s, e) {
      failure = e;
      wake();
    },
    close() {
      failure ??= new Error("the server closed the connection");
      wake();
    },
  };
  const connecting = "unix" in target ? Bun.connect({ unix: target.unix, socket: handlers }) : Bun.connect({ ...target, socket: handlers });
  const socket = await connecting.catch((e) => {
    throw new ToolError(`mcq stats: cannot connect to ${where}: ${reason(e)}`);
  });
  async function ask(command: string): Promise<string[]> {
    received = "";
    socket.write(command);
    while (!received.endsWith("END\r\n") && !received.endsWith("ERROR\r\n") && failure === null) {
      await new Promise<void>((ok) => (wake = ok));
    }
    if (failure !== null) throw new ToolError(`mcq stats: ${where}: ${reason(failure)}`);
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
