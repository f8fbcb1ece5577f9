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
 * other client waits for it. Plain passwords are compared in constant time, and a user who is not
 * in the file costs as much as a wrong password (passwordCheck). SIGHUP reads the file
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

export interface User {
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

/** Bun.password.verify's shape: injected by tests, which count the calls. */
export type VerifyHash = (password: string, hash: string) => Promise<boolean>;

export function createAuth(path: string, timeoutS: number, log: Logger, verifyHash: VerifyHash = Bun.password.verify): Auth {
  let users = loadAuthFile(path);
  let check = passwordCheck(users, verifyHash);
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
    const known = users.has(token.user);
    const checked = check(token.user, token.password);
    if (typeof checked === "boolean") return settle(s, st, req.noreply, token.user, checked, known);
    // A hash check runs on Bun's thread pool; the session waits for it, as for a long listing.
    let result: boolean | null = null;
    checked.then((ok) => (result = ok)).finally(() => ctx.resume(s));
    const reply = req.noreply ? null : newReply(false);
    if (reply !== null) s.held.push(reply);
    s.job = () => {
      if (result === null) return false;
      s.job = null;
      const outcome = settle(s, st, true, token.user, result, known); // true: the reply is the one held above
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
      check = passwordCheck(users, verifyHash);
    },
    async verify(name, password) {
      const user = users.get(name);
      // Checked even when the rights refuse: the time taken says nothing of them either.
      const ok = await check(name, password);
      return ok && user !== undefined && (user.rights === null || allows(user.rights, "read", null));
    },
  };
}

/**
 * Whether a user and password hold: a boolean for a plain password, a promise for a hash. A user
 * not in the file is checked against a dummy hash with the algorithm and cost of the file's first
 * hash, and refused: it takes as long as a wrong password for a hashed user, so the time of the
 * reply does not tell which names exist. With no hash in the file every check is plainEqual's.
 */
export function passwordCheck(users: Map<string, User>, verifyHash: VerifyHash): (name: string, password: string) => boolean | Promise<boolean> {
  const first = [...users.values()].find((u) => u.hashed);
  const dummy = first === undefined ? null : dummyHash(first.secret);
  return (name, password) => {
    const user = users.get(name);
    if (user === undefined && dummy === null) return plainEqual(password, "");
    if (user === undefined) return verifyHash(password, dummy!).then(() => false, () => false);
    if (!user.hashed) return plainEqual(password, user.secret);
    return verifyHash(password, user.secret).catch(() => false);
  };
}

/**
 * A hash no password is known to match, with the parameters (so the cost) of `like`: its salt and
 * output replaced by fixed bytes. A format not recognised here is used as it is: the cost is then
 * that very hash's, and the check's result is thrown away anyway.
 */
export function dummyHash(like: string): string {
  const b64 = (bytes: number, fill: number) => Buffer.alloc(bytes, fill).toString("base64").replace(/=+$/, "");
  const argon2 = /^(\$argon2(?:id|i|d)\$v=\d+\$m=\d+,t=\d+,p=\d+)\$/.exec(like);
  if (argon2 !== null) return `${argon2[1]}$${b64(16, 7)}$${b64(32, 0)}`;
  const bcrypt = /^(\$2[aby]?\$\d\d)\$/.exec(like);
  if (bcrypt !== null) return `${bcrypt[1]}$abcdefghijklmnopqrstuu${"a".repeat(31)}`; // 22 salt, 31 output characters
  return like;
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
