/**
 * The backup socket: `<data dir>/backup.sock`, through which `mcq backup` (tools/backup.ts) asks
 * the running server for a consistent snapshot of its data file. The server keeps its exclusive
 * lock on the file (a second process never opens it): it only checkpoints everything into the file and holds further
 * checkpoints while the tool, another process, copies it. So the event loop stalls for one
 * checkpoint at most (the WAL is kept near 2 MB), however large the file is.
 *
 * Line protocol, one connection per backup:
 *   hold\n      →  held <file>\n     the file is a snapshot until released
 *               or error <reason>\n
 *   release\n   →  released\n        the hold lasted until now: the copy is good
 *               or error <reason>\n  it ended early (server stopping, time out): the copy may be torn
 * A connection that closes releases its hold. The socket is the owner's alone (the data directory
 * is 0700 and the socket 0600), as the file it copies is.
 */
import type { Socket, UnixSocketListener } from "bun";
import { chmodSync, unlinkSync } from "node:fs";
import { join } from "node:path";
import type { Logger } from "./log";
import type { Snapshots } from "./store/store";
import type { Turns } from "./turn";

export const BACKUP_SOCKET = "backup.sock";
/** A hold ends by itself after this long, so a stuck backup cannot let the WAL grow for ever. */
export const MAX_HOLD_MS = 30 * 60 * 1000;
/** Longest path a unix socket can have (sun_path, with its NUL). */
const MAX_SOCKET_PATH = 107;

interface Backup {
  holding: boolean;
  /** Why the hold ended before release, said at release. */
  lost: string | null;
  input: string;
  timer: Timer | null;
  closed: boolean;
}

export interface SnapshotSocket {
  /** Ends every hold (the copies in progress are told at release) and stops listening. */
  stop(): void;
}

/**
 * Listens on the data directory's backup socket; null (and logged why) when it cannot. A socket
 * file left by a server killed with -9 is replaced: the data file's lock says this is the only
 * server of the directory.
 */
export function startSnapshotSocket(home: string, snapshots: Snapshots, turns: Turns, log: Logger): SnapshotSocket | null {
  const path = join(home, BACKUP_SOCKET);
  if (Buffer.byteLength(path) > MAX_SOCKET_PATH) {
    log.warn(`${path} is too long for a unix socket: mcq backup cannot reach this server (stop it to back up)`);
    return null;
  }
  let holder: Backup | null = null;
  /** Holds asked for, made after the next commit (between batches). */
  const waiting: Socket<Backup>[] = [];

  const previous = turns.afterCommit;
  turns.afterCommit = () => {
    previous?.();
    for (const socket of waiting.splice(0)) hold(socket);
  };

  function hold(socket: Socket<Backup>): void {
    const b = socket.data;
    if (b.closed) return; // it went away while waiting for the commit
    if (holder !== null) {
      socket.write("error another backup is in progress\n");
      return;
    }
    try {
      const file = snapshots.hold();
      holder = b;
      b.holding = true;
      b.timer = setTimeout(() => end(b, `the hold ran out after ${MAX_HOLD_MS / 60000} minutes`), MAX_HOLD_MS);
      log.info("backup: the data file is held for a copy");
      socket.write(`held ${file}\n`);
    } catch (e) {
      socket.write(`error ${(e as Error).message}\n`);
    }
  }

  /** Ends b's hold; `why` is what its release will say, if it ended before release. */
  function end(b: Backup, why: string | null): void {
    if (!b.holding) return;
    b.holding = false;
    b.lost = why;
    if (b.timer !== null) clearTimeout(b.timer);
    holder = null;
    try {
      snapshots.release();
    } catch (e) {
      log.error(`backup: release: ${(e as Error).message}`);
    }
    log.info(why === null ? "backup: copy done, the data file is released" : `backup: hold ended: ${why}`);
  }

  function line(socket: Socket<Backup>, text: string): void {
    const b = socket.data;
    if (text === "hold") {
      waiting.push(socket);
      turns.task(() => {}); // a turn runs, and after its commit the hold
    } else if (text === "release") {
      const ok = b.holding;
      end(b, null);
      socket.write(ok ? "released\n" : `error ${b.lost ?? "nothing is held"}\n`);
    } else {
      socket.write("error unknown command\n");
    }
  }

  try {
    unlinkSync(path);
  } catch {
    // Nothing left there.
  }
  let listener: UnixSocketListener<Backup>;
  try {
    listener = Bun.listen<Backup>({
      unix: path,
      socket: {
        open(socket) {
          socket.data = { holding: false, lost: null, input: "", timer: null, closed: false };
        },
        data(socket, chunk) {
          const b = socket.data;
          b.input += chunk.toString("latin1");
          if (b.input.length > 1024) return void socket.end("error line too long\n");
          let i;
          while ((i = b.input.indexOf("\n")) >= 0) {
            const text = b.input.slice(0, i).trim();
            b.input = b.input.slice(i + 1);
            line(socket, text);
          }
        },
        close(socket) {
          socket.data.closed = true;
          end(socket.data, "the backup's connection closed");
        },
        error() {},
      },
    });
    chmodSync(path, 0o600);
  } catch (e) {
    log.warn(`cannot listen on ${path}: ${(e as Error).message}; mcq backup cannot reach this server`);
    return null;
  }
  return {
    stop() {
      if (holder !== null) end(holder, "the server is stopping");
      listener.stop(true);
      try {
        unlinkSync(path);
      } catch {
        // Already gone.
      }
    },
  };
}
