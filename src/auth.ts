/**
 * -Y <authfile>: memcached's text-protocol authentication, plus hashed passwords and queue rights.
 *
 * A connection that has not logged in may send only one thing: a `set <any key> <flags> <exptime>
 * <bytes>` whose data is `user password`. It is the login, and is never enqueued: STORED when it
 * holds, `CLIENT_ERROR authentication failure` when not, `CLIENT_ERROR bad authentication token
 * format` when the data is not two words. Anything else answers `CLIENT_ERROR unauthenticated`
 * (quit still quits, and the parser's own errors stay as they are). After 3 failed logins, or
 * --auth-timeout seconds without one, the connection is closed.
 *
 * The file: one `user:password[:rights]` per line; `#` comments and blank lines are skipped. A
 * password that starts with `$argon2` or `$2` is a Bun.password hash (`mcq passwd`); its check
 * runs off the event loop (argon2id takes tens of ms), as the session's job (commands.ts), so no
 * other client waits for it. Plain passwords are compared in constant time. SIGHUP reads the file
 * again: connections logged in keep their user, whose rights are then the new file's (none if
 * the user is gone).
 */
import { createHash, timingSafeEqual } from "node:crypto";
import { readFileSync } from "node:fs";
import type { Outcome } from "./commands";
import type { Context } from "./context";
import { reason } from "./errors";
import type { Logger } from "./log";
import { REPLY } from "./protocol/reply";
import type { Request } from "./protocol/types";
import { allows, isRightsField, needs, NO_RIGHTS, parseRights, type Rights } from "./rights";
import { newReply, put, say, type Session } from "./session";

/** Failed logins after which the connection is closed (memcached's count). */
const MAX_FAILURES = 3;

interface User {
  secret: string;
  hashed: boolean;
  /** null: every right (no third field). */
  rights: Rights | null;
}

interface SessionAuth {
  user: string | null;
  failures: number;
  peer: string;
  timer: ReturnType<typeof setTimeout> | null;
}

export interface Auth {
  path: string;
  /** Null when the request may run; otherwise it was answered (or refused) here. */
  guard(ctx: Context, s: Session, req: Request): Outcome | null;
  /** Whether the session's user may read the queue (`stats queue` lists only those). */
  mayRead(s: Session, queue: string): boolean;
  /** A connection opened: it has --auth-timeout seconds to log in, or `close` is called. */
  opened(s: Session, peer: string, close: () => void): void;
  closed(s: Session): void;
  /** Reads the file again; throws (keeping the old users) if it cannot. */
  reload(): void;
  /** For HTTP basic auth: whether the pair holds, for a user who may read every queue. */
  verify(user: string, password: string): Promise<boolean>;
}

export class AuthFileError extends Error {}

export function createAuth(path: string, timeoutS: number, log: Logger): Auth {
  let users = loadAuthFile(path);
  const state = new WeakMap<Session, SessionAuth>();
  const stateOf = (s: Session): SessionAuth => {
    let st = state.get(s);
    if (st === undefined) state.set(s, (st = { user: null, failures: 0, peer: "unknown", timer: null }));
    return st;
  };
  // After a reload, a user who is gone has no rights, not all of them.
  const rightsOf = (st: SessionAuth): Rights | null => (st.user !== null && users.has(st.user) ? users.get(st.user)!.rights : NO_RIGHTS);

  function guard(ctx: Context, s: Session, req: Request): Outcome | null {
    const st = stateOf(s);
    if (st.user === null) {
      if (req.kind === "quit" || req.kind === "error") return null;
      if (req.kind !== "set") {
        say(s, REPLY.UNAUTHENTICATED);
        return "next";
      }
      return login(ctx, s, st, req);
    }
    const rights = rightsOf(st);
    for (const [right, queue] of needs(req)) {
      if (allows(rights, right, queue)) continue;
      log.debug(`permission denied: user ${st.user} from ${st.peer}: ${req.kind} needs ${right} on ${queue ?? "every queue"}`);
      if (!("noreply" in req && req.noreply)) say(s, REPLY.PERMISSION_DENIED);
      return "next";
    }
    return null;
  }

  function login(ctx: Context, s: Session, st: SessionAuth, req: Extract<Request, { kind: "set" }>): Outcome {
    const token = parseToken(req.data);
    if (token === null) return failed(s, st, req.noreply, REPLY.AUTH_BAD_TOKEN, "bad authentication token format");
    const user = users.get(token.user);
    if (user === undefined || !user.hashed) {
      return settle(s, st, req.noreply, token.user, plainEqual(token.password, user?.secret ?? ""), user !== undefined);
    }
    // A hash check runs on Bun's thread pool; the session waits for it, as for a long listing.
    let result: boolean | null = null;
    Bun.password.verify(token.password, user.secret).then((ok) => (result = ok), () => (result = false))
      .finally(() => ctx.resume(s));
    const reply = req.noreply ? null : newReply(false);
    if (reply !== null) s.held.push(reply);
    s.job = () => {
      if (result === null) return false;
      s.job = null;
      const outcome = settle(s, st, true, token.user, result, true); // true: the reply is the one held above
      if (reply !== null) {
        put(reply, result ? REPLY.STORED : REPLY.AUTH_FAILED);
        reply.complete = true;
      }
      return outcome === "close" ? "close" : true;
    };
    return "wait";
  }

  function settle(s: Session, st: SessionAuth, noreply: boolean, name: string, ok: boolean, known: boolean): Outcome {
    if (!ok) return failed(s, st, noreply, REPLY.AUTH_FAILED, known ? `wrong password for user ${name}` : `unknown user ${name}`);
    st.user = name;
    if (st.timer !== null) clearTimeout(st.timer);
    st.timer = null;
    log.debug(`user ${name} logged in from ${st.peer}`);
    if (!noreply) say(s, REPLY.STORED);
    return "next";
  }

  function failed(s: Session, st: SessionAuth, noreply: boolean, reply: string, why: string): Outcome {
    st.failures++;
    const closing = st.failures >= MAX_FAILURES;
    log.warn(`authentication failure from ${st.peer}: ${why}${closing ? `; closing after ${MAX_FAILURES} failures` : ""}`);
    if (!noreply) say(s, reply);
    return closing ? "close" : "next";
  }

  return {
    path,
    guard,
    mayRead: (s, queue) => allows(rightsOf(stateOf(s)), "read", queue),
    opened(s, peer, close) {
      const st = stateOf(s);
      st.peer = peer;
      st.timer = setTimeout(() => {
        st.timer = null;
        if (st.user !== null) return;
        log.warn(`authentication timeout from ${peer}: not logged in within ${timeoutS} s; closing`);
        close();
      }, timeoutS * 1000);
    },
    closed(s) {
      const st = state.get(s);
      if (st?.timer != null) clearTimeout(st.timer);
    },
    reload() {
      users = loadAuthFile(path);
    },
    async verify(name, password) {
      const user = users.get(name);
      if (user === undefined || (user.rights !== null && !allows(user.rights, "read", null))) {
        plainEqual(password, "");
        return false;
      }
      return user.hashed ? Bun.password.verify(password, user.secret).catch(() => false) : plainEqual(password, user.secret);
    },
  };
}

/** `user password`: split at the first space; both parts non-empty, no line ends. */
function parseToken(data: Buffer): { user: string; password: string } | null {
  const text = data.toString("utf8");
  const space = text.indexOf(" ");
  if (space <= 0 || space === text.length - 1 || /[\r\n]/.test(text)) return null;
  return { user: text.slice(0, space), password: text.slice(space + 1) };
}

/** Constant time whatever the lengths: the digests are compared, never the passwords. */
function plainEqual(given: string, secret: string): boolean {
  const a = createHash("sha256").update(given).digest();
  const b = createHash("sha256").update(secret).digest();
  return timingSafeEqual(a, b) && secret !== "";
}

const isHash = (secret: string) => /^\$(argon2(id|i|d)|2[aby]?)\$/.test(secret);

/** Reads and checks the whole file; throws AuthFileError naming the file and line. */
export function loadAuthFile(path: string): Map<string, User> {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (e) {
    throw new AuthFileError(`cannot read the authfile ${path}: ${reason(e)}`);
  }
  const users = new Map<string, User>();
  text.split("\n").forEach((raw, i) => {
    const line = raw.replace(/\r$/, "");
    if (line.trim() === "" || line.startsWith("#")) return;
    const where = `authfile ${path} line ${i + 1}`;
    const colon = line.indexOf(":");
    if (colon <= 0) throw new AuthFileError(`${where}: not user:password`);
    const name = line.slice(0, colon);
    let secret = line.slice(colon + 1);
    let rights: Rights | null = null;
    const last = secret.lastIndexOf(":");
    if (last >= 0 && isRightsField(secret.slice(last + 1))) {
      try {
        rights = parseRights(secret.slice(last + 1));
      } catch (e) {
        throw new AuthFileError(`${where}: rights ${(e as Error).message}`);
      }
      secret = secret.slice(0, last);
    }
    if (secret === "") throw new AuthFileError(`${where}: user ${name} has an empty password`);
    if (/\s/.test(name)) throw new AuthFileError(`${where}: the user name holds a space`);
    if (users.has(name)) throw new AuthFileError(`${where}: user ${name} appears twice`);
    users.set(name, { secret, hashed: isHash(secret), rights });
  });
  if (users.size === 0) throw new AuthFileError(`the authfile ${path} has no users: nobody could log in`);
  return users;
}
