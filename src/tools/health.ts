/**
 * `mcq health`: is a server answering? Connects, sends `version`, and expects `VERSION …` within
 * the timeout. Exit 0 with one line on stdout when it does, 1 with one line on stderr naming the
 * address and the reason when it does not (2 for bad flags, as every tool).
 *
 * It exists for container health checks: distroless and scratch images have no shell and no
 * curl, so the image's HEALTHCHECK runs the binary itself. It reads the server's own address
 * settings, flags or MCQ_LISTEN / MCQ_PORT / MCQ_UNIX_SOCKET, so an image that configures the
 * server through those variables needs no arguments here to check the same server.
 */
import { Command, InvalidArgumentError, Option } from "commander";
import { connect } from "node:net";
import { DEFAULTS } from "../config";

export interface Target {
  host: string;
  port: number;
  unixSocket: string | null;
  timeoutMs: number;
}

export type Health = { ok: true; line: string } | { ok: false; line: string };

/** A port from a flag or MCQ_PORT. A Kubernetes service link (tcp://…) is not a port: cli.ts skips it, and so do we. */
function port(value: string, previous: number): number {
  if (/^(tcp|udp|sctp):\/\//.test(value)) return previous;
  if (!/^\d+$/.test(value) || Number(value) < 1 || Number(value) > 65535) throw new InvalidArgumentError("not a port from 1 to 65535");
  return Number(value);
}

function milliseconds(value: string): number {
  if (!/^\d+$/.test(value) || Number(value) < 1 || Number(value) > 600_000) throw new InvalidArgumentError("not a whole number of ms from 1 to 600000");
  return Number(value);
}

export function healthCommand(): Command {
  return new Command("mcq health")
    .description("check that a running server answers; exit 0 if it does, 1 if not")
    .addOption(new Option("-l, --listen <addr>", "the server's address (0.0.0.0 and :: mean this machine)").env("MCQ_LISTEN").default(DEFAULTS.host))
    .addOption(new Option("-p, --port <num>", "the server's TCP port").env("MCQ_PORT").argParser(port).default(DEFAULTS.port))
    .addOption(new Option("-s, --unix-socket <path>", "the server's unix socket, instead of TCP").env("MCQ_UNIX_SOCKET"))
    .addOption(new Option("--timeout <ms>", "how long to wait for the reply").argParser(milliseconds).default(2000))
    .exitOverride()
    .configureOutput({ writeErr: () => {} });
}

/** The options of healthCommand() as a Target. A wildcard listen address is reached on loopback. */
export function target(o: { listen: string; port: number; unixSocket?: string; timeout: number }): Target {
  const host = o.listen === "0.0.0.0" ? "127.0.0.1" : o.listen === "::" || o.listen === "[::]" ? "::1" : o.listen;
  return { host, port: o.port, unixSocket: o.unixSocket ?? null, timeoutMs: o.timeout };
}

/** Asks the server for its version; never throws, never waits past the timeout. */
export function checkHealth(t: Target): Promise<Health> {
  const where = t.unixSocket ?? (t.host.includes(":") ? `[${t.host}]:${t.port}` : `${t.host}:${t.port}`);
  const started = performance.now();
  return new Promise((done) => {
    const socket = t.unixSocket !== null ? connect({ path: t.unixSocket }) : connect({ host: t.host, port: t.port });
    let received = "";
    let settled = false;
    const finish = (result: Health) => {
      if (settled) return; // destroy() below still emits close
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      done(result);
    };
    const timer = setTimeout(
      () => finish({ ok: false, line: `mcq health: ${where}: no reply to version within ${t.timeoutMs} ms` }),
      t.timeoutMs,
    );
    socket.setNoDelay(true);
    socket.on("connect", () => socket.write("version\r\n"));
    socket.on("data", (chunk: Buffer) => {
      received += chunk.toString("latin1");
      const end = received.indexOf("\r\n");
      if (end < 0 && received.length < 1024) return;
      const reply = received.slice(0, end < 0 ? 80 : end);
      const ms = (performance.now() - started).toFixed(1);
      finish(reply.startsWith("VERSION ")
        ? { ok: true, line: `mcq health: ${where} answered ${reply} in ${ms} ms` }
        : { ok: false, line: `mcq health: ${where}: unexpected reply to version: ${JSON.stringify(reply)}` });
    });
    socket.on("error", (e: NodeJS.ErrnoException) =>
      finish({ ok: false, line: `mcq health: ${where}: ${e.message}` }));
    socket.on("close", () => finish({ ok: false, line: `mcq health: ${where}: closed the connection without a reply` }));
  });
}
