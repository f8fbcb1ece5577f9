/**
 * The listening sockets: one per -l (memcached's form: repeatable, `notls:` marks a plain one
 * while -Z is on), or the unix socket, which stays plain (its file mode protects it).
 *
 * Certificates are reloaded without a restart (refresh_certs, SIGHUP). Bun.listen cannot swap a
 * certificate in place, so each TLS listener is opened again on the same port with the new one
 * and the old is stopped with stop(false): connections already open stay up. Both
 * are bound for that moment, so TLS listeners set SO_REUSEPORT; which lets another process of
 * the same user bind the port too, so at start the port is first bound once without it, which
 * fails as usual if the port is taken.
 */
import type { SocketHandler, TCPSocketListener, UnixSocketListener } from "bun";
import { chmodSync } from "node:fs";
import type { Config, Listen } from "./config";
import type { Conn } from "./conn";
import { describeCertificate, loadTls, type LoadedTls } from "./tls";

export class ListenError extends Error {}

export interface Listening {
  /** `host:port` or the unix socket path, as its listening line shows it. */
  address: string;
  port: number;
  tls: boolean;
}

export interface Listeners {
  /** In -l order: the first is the main one. */
  list: Listening[];
  /** Loads the certificate files again and moves the TLS listeners to them; throws (keeping the old) if it cannot. */
  refreshCerts(): LoadedTls;
  /** Stops accepting; open connections stay. */
  stop(): void;
}

/** One -l value: `[notls:]host[:port]`, the host an IPv6 address in brackets when a port follows. */
export function parseListen(value: string): Listen | null {
  const plain = value.startsWith("notls:");
  const rest = plain ? value.slice("notls:".length) : value;
  const m = /^\[([^\]]+)\](?::(\d{1,5}))?$/.exec(rest) ?? /^([^:[\]]+)(?::(\d{1,5}))?$/.exec(rest);
  // A bare IPv6 address (two colons at least) has no port: memcached's -l ::1 too.
  if (m === null) return /^[0-9a-fA-F.]*:[0-9a-fA-F.]*:[0-9a-fA-F:.]*$/.test(rest) ? { host: rest, port: null, plain } : null;
  const port = m[2] === undefined ? null : Number(m[2]);
  if (port !== null && port > 65535) return null;
  return { host: m[1]!, port, plain };
}

/** The -l values, or the one default listener on host and port. */
export function listensOf(config: Config): Listen[] {
  return config.listen.length > 0 ? config.listen : [{ host: config.host, port: null, plain: false }];
}

type Tcp = { listen: Listen; listener: TCPSocketListener<Conn> };

export function openListeners(config: Config, handlers: SocketHandler<Conn>, log: { info(m: string): void }): Listeners {
  if (config.unixSocket !== null) {
    const path = config.unixSocket;
    const listener: UnixSocketListener<Conn> = attempt(path, () => Bun.listen<Conn>({ unix: path, socket: handlers }));
    chmodSync(path, config.socketMode);
    return {
      list: [{ address: path, port: 0, tls: false }],
      refreshCerts: () => {
        throw new Error("TLS is not on (-Z); the unix socket is plain");
      },
      stop: () => listener.stop(false),
    };
  }
  let tls = config.tls === null ? null : loadTls(config.tls);
  if (tls !== null) log.info(`TLS certificate ${config.tls!.cert}: ${describeCertificate(tls.cert)}`);
  const open: Tcp[] = [];
  try {
    for (const listen of listensOf(config)) {
      const port = listen.port ?? config.port;
      const where = `${listen.host}:${port}`;
      if (tls === null || listen.plain) {
        open.push({ listen, listener: attempt(where, () => Bun.listen<Conn>({ hostname: listen.host, port, socket: handlers })) });
        continue;
      }
      // Bound once without SO_REUSEPORT: fails as usual if someone has the port.
      const probe = attempt(where, () => Bun.listen<Conn>({ hostname: listen.host, port, socket: handlers }));
      const free = probe.port;
      probe.stop(true);
      const options = { hostname: listen.host, port: free, socket: handlers, tls, reusePort: true };
      open.push({ listen: { ...listen, port: free }, listener: attempt(where, () => Bun.listen<Conn>(options)) });
    }
  } catch (e) {
    for (const { listener } of open) listener.stop(true);
    throw e;
  }
  const list = open.map(({ listen, listener }) => ({
    address: `${listen.host.includes(":") ? `[${listen.host}]` : listen.host}:${listener.port}`,
    port: listener.port,
    tls: tls !== null && !listen.plain,
  }));

  function refreshCerts(): LoadedTls {
    if (tls === null) throw new Error("TLS is not on (-Z)");
    const next = loadTls(config.tls!); // throws on a bad file: nothing changed
    const moved: [number, TCPSocketListener<Conn>][] = [];
    try {
      open.forEach(({ listen, listener }, i) => {
        if (listen.plain) return;
        const where = `${listen.host}:${listener.port}`;
        const options = { hostname: listen.host, port: listener.port, socket: handlers, tls: next, reusePort: true };
        moved.push([i, attempt(where, () => Bun.listen<Conn>(options))]);
      });
    } catch (e) {
      for (const [, listener] of moved) listener.stop(false);
      throw e;
    }
    for (const [i, listener] of moved) {
      open[i]!.listener.stop(false); // its connections stay up with the old certificate
      open[i]!.listener = listener;
    }
    tls = next;
    return next;
  }

  return { list, refreshCerts, stop: () => open.forEach(({ listener }) => listener.stop(false)) };
}

function attempt<T>(where: string, listen: () => T): T {
  try {
    return listen();
  } catch (e) {
    const code = (e as { code?: string }).code;
    throw new ListenError(`cannot listen on ${where}: ${code === "EADDRINUSE" ? "address already in use" : (e as Error).message}`);
  }
}
