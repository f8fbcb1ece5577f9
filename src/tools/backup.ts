/**
 * `mcq backup -H <dir> <file>`: a consistent snapshot of a data directory's file, while its
 * server serves or not. Restore: put the file as mcq.db in an empty directory and start with -H.
 *
 * - A server runs (the file is locked): ask it over <dir>/backup.sock (snapshot-socket.ts) to
 *   checkpoint and hold its file, copy the file here, in this process, then ask it to release;
 *   only a hold that lasted the whole copy makes a good snapshot. The server's loop does one
 *   checkpoint and never copies anything itself.
 * - No server: VACUUM INTO, under the same lock a server takes, so none can start meanwhile.
 * Either way the copy is checked (quick_check) before it takes its name, which never replaces an
 * existing file, and it is the owner's alone (0600).
 */
import type { Database } from "bun:sqlite";
import { closeSync, existsSync, fsyncSync, linkSync, openSync, unlinkSync } from "node:fs";
import { dirname, join } from "node:path";
import { BACKUP_SOCKET } from "../snapshot-socket";
import { DB_FILE, StoreLockedError, openDatabase, verify } from "../store/sqlite-file";
import { ToolError } from "./datadir";

export async function backup(home: string, target: string): Promise<string> {
  const source = join(home, DB_FILE);
  if (!existsSync(source)) throw new ToolError(`mcq backup: no data file ${source}`);
  if (existsSync(target)) throw new ToolError(`mcq backup: ${target} exists; remove it or choose another name`);
  const partial = `${target}.partial-${process.pid}`;
  try {
    closeSync(openSync(partial, "wx", 0o600));
  } catch (e) {
    throw new ToolError(`mcq backup: cannot write ${target}: ${why(e)}`);
  }
  try {
    const how = await copy(source, partial);
    const summary = check(partial);
    const fd = openSync(partial, "r+");
    fsyncSync(fd);
    closeSync(fd);
    try {
      linkSync(partial, target); // unlike rename, fails rather than replace a file made meanwhile
    } catch (e) {
      throw new ToolError(`mcq backup: cannot write ${target}: ${why(e)}`);
    }
    syncDir(dirname(target));
    return `backup of ${source} (${how}) written to ${target}: ${summary}`;
  } finally {
    for (const f of [partial, `${partial}-wal`, `${partial}-shm`]) {
      try {
        unlinkSync(f);
      } catch {
        // Not there.
      }
    }
  }
}

/** Copies the data file to `partial`, offline or through its server; says which. */
async function copy(source: string, partial: string): Promise<string> {
  let db: Database;
  try {
    db = openDatabase(source, { sync: "full", cacheMb: 16 });
  } catch (e) {
    if (!(e instanceof StoreLockedError)) throw new ToolError(`mcq backup: ${(e as Error).message}`);
    await copyFromServer(source, partial);
    return "server running";
  }
  try {
    unlinkSync(partial); // VACUUM INTO wants to create its file; the umask keeps it 0600
    db.run("VACUUM INTO ?", [partial]);
  } catch (e) {
    throw new ToolError(`mcq backup: cannot copy ${source}: ${(e as Error).message}`);
  } finally {
    db.close();
  }
  return "no server running";
}

/** A line-at-a-time client of the backup socket. */
async function copyFromServer(source: string, partial: string): Promise<void> {
  const path = join(dirname(source), BACKUP_SOCKET);
  let input = "";
  let closed = false;
  let wake = () => {};
  const socket = await Bun.connect({
    unix: path,
    socket: {
      data(_s, chunk) {
        input += chunk.toString("latin1");
        wake();
      },
      close() {
        closed = true;
        wake();
      },
      error() {},
    },
  }).catch((e: Error) => {
    throw new ToolError(`mcq backup: ${source} is in use, and its server does not answer on ${path} (${e.message})`);
  });
  const ask = async (command: string): Promise<string> => {
    socket.write(`${command}\n`);
    while (!input.includes("\n") && !closed) await new Promise<void>((ok) => (wake = ok));
    const i = input.indexOf("\n");
    if (i < 0) throw new ToolError(`mcq backup: the server closed ${path} during the backup (stopped?); nothing written`);
    const line = input.slice(0, i);
    input = input.slice(i + 1);
    return line;
  };
  try {
    const held = await ask("hold");
    if (!held.startsWith("held ")) throw new ToolError(`mcq backup: the server cannot make a snapshot: ${held.replace(/^error /, "")}`);
    // The file does not change until release: a plain copy of it is the snapshot.
    await Bun.write(partial, Bun.file(source));
    const released = await ask("release");
    if (released !== "released") {
      throw new ToolError(`mcq backup: the snapshot did not last the copy (${released.replace(/^error /, "")}); nothing written, try again`);
    }
  } finally {
    socket.end();
  }
}

/** Opens the copy as mcq would and checks it; a summary of what it holds. */
function check(partial: string): string {
  const db = openDatabase(partial, { sync: "full", cacheMb: 16 });
  try {
    const problems = verify(db, false);
    if (problems.length > 0) throw new ToolError(`mcq backup: the copy is damaged (${problems[0]}); nothing written`);
    const [queues] = db.query("SELECT count(*) FROM queues").values()[0] as number[];
    const [messages, bytes] = db.query("SELECT count(*), coalesce(sum(length(body)), 0) FROM messages").values()[0] as number[];
    return `${queues} queues, ${messages} messages, ${bytes} bytes`;
  } finally {
    db.close();
  }
}

/** A file system error as a few words, without the temporary name it happened on. */
function why(e: unknown): string {
  const code = (e as NodeJS.ErrnoException).code ?? "";
  const words: Record<string, string> = {
    ENOENT: "its directory does not exist",
    ENOTDIR: "a part of its path is not a directory",
    EACCES: "permission denied",
    EPERM: "permission denied",
    EROFS: "read-only file system",
    ENOSPC: "no space left on the device",
    EEXIST: "a file of that name appeared meanwhile",
  };
  return words[code] ?? (e as Error).message;
}

function syncDir(dir: string): void {
  try {
    const fd = openSync(dir, "r");
    fsyncSync(fd);
    closeSync(fd);
  } catch {
    // Not every system lets a directory be opened for fsync; the file itself is synced.
  }
}
