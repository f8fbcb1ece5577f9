/**
 * Before listening on a unix socket path: a socket file left by a server that died is removed,
 * so a restart after kill -9 works, but a socket that a live server answers on is not taken
 * from it (unlinking it would leave that server running and unreachable).
 */
import { accessSync, constants, lstatSync, unlinkSync } from "node:fs";
import { connect } from "node:net";
import { dirname } from "node:path";
import { reason } from "./errors";

/** Whether a server accepts connections at `path`: yes, no (stale), or the error that prevents knowing. */
function probe(path: string): Promise<"live" | "stale" | Error> {
  return new Promise((done) => {
    const socket = connect({ path });
    socket.once("connect", () => {
      socket.destroy();
      done("live");
    });
    socket.once("error", (e: NodeJS.ErrnoException) => {
      socket.destroy();
      // ECONNREFUSED: nobody listens. EAGAIN: someone listens, with a full backlog.
      if (e.code === "ECONNREFUSED" || e.code === "ENOENT") done("stale");
      else if (e.code === "EAGAIN") done("live");
      else done(e);
    });
  });
}

/**
 * Makes `path` ready for listening: throws an Error with a one-line message if a server is
 * listening there (or that cannot be told), removes a stale socket file, and leaves any other
 * kind of file alone, so that the listen fails and names it.
 */
export async function prepareUnixSocket(path: string): Promise<void> {
  // Bun.listen would say only "Failed to listen at <path>", for any reason.
  const dir = dirname(path);
  try {
    if (!lstatSync(dir).isDirectory()) throw new Error("not a directory");
    accessSync(dir, constants.W_OK | constants.X_OK);
  } catch (e) {
    throw new Error(`cannot listen on ${path}: the directory ${dir}: ${reason(e)}`);
  }
  try {
    if (!lstatSync(path).isSocket()) return;
  } catch {
    return; // nothing there
  }
  const state = await probe(path);
  if (state === "live") throw new Error(`cannot listen on ${path}: a server is already listening there`);
  if (state instanceof Error) throw new Error(`cannot listen on ${path}: cannot tell whether a server is listening there (${state.message})`);
  try {
    unlinkSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw new Error(`cannot listen on ${path}: ${(e as Error).message}`);
  }
}
