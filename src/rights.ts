/**
 * Queue rights, the optional third field of an authfile line: `read=jobs.*,write=jobs.*,admin=tmp.*`.
 *   read   get (and its peek, open, close, abort), stats queue <q>; `stats queue` lists only these
 *   write  set
 *   admin  delete and flush of a queue; flush_all, stats reset and refresh_certs need admin=*
 * A glob's `*` matches any bytes, `.` and `+` included. Each right is granted by
 * any of its globs: rights only grant, so no two globs can disagree and the DECISIONS rule "the
 * longest literal prefix wins" never has to choose. A user without the field may do everything
 * (memcached's authfile has no rights); a field that is present grants only what it names.
 */
import type { Request } from "./protocol/types";

export type Right = "read" | "write" | "admin";

const RIGHTS: Right[] = ["read", "write", "admin"];

export type Rights = Record<Right, RegExp[]>;

/** What an unknown user (removed from the file by a reload) may do: nothing. */
export const NO_RIGHTS: Rights = { read: [], write: [], admin: [] };

export class RightsError extends Error {}

/** Whether text looks like a rights field (so that a plain password holding ':' is not read as one). */
export function isRightsField(text: string): boolean {
  return /^(read|write|admin)=/.test(text);
}

export function parseRights(text: string): Rights {
  const rights: Rights = { read: [], write: [], admin: [] };
  for (const item of text.split(",")) {
    const eq = item.indexOf("=");
    const right = item.slice(0, eq) as Right;
    const glob = item.slice(eq + 1);
    if (eq < 0 || !RIGHTS.includes(right)) throw new RightsError(`'${item}' is not read=, write= or admin= followed by a glob`);
    if (glob === "" || /[\s\x00-\x1f]/.test(glob)) throw new RightsError(`'${item}': the glob is empty or holds a space or a control character`);
    rights[right].push(globRegExp(glob));
  }
  return rights;
}

/** `*` matches any bytes; everything else matches itself. */
export function globRegExp(glob: string): RegExp {
  const literal = glob.split("*").map((part) => part.replace(/[\\^$.|?+()[\]{}]/g, "\\$&"));
  return new RegExp(`^${literal.join(".*")}$`, "s");
}

/** Whether the rights (null: all of them) grant `right` on `queue`; queue null means every queue. */
export function allows(rights: Rights | null, right: Right, queue: string | null): boolean {
  if (rights === null) return true;
  // Every queue: only a glob of nothing but stars matches them all.
  if (queue === null) return rights[right].some((re) => re.source === "^.*$" || /^\^(\.\*)+\$$/.test(re.source));
  return rights[right].some((re) => re.test(queue));
}

/** The rights a request needs, as [right, queue] pairs (queue null: every queue). */
export function needs(req: Request): [Right, string | null][] {
  switch (req.kind) {
    case "get":
      return req.keys.map((k) => ["read", k.queue]);
    case "set":
      return [["write", req.queue]];
    case "delete":
    case "flush":
      return [["admin", req.queue]];
    case "flush_all":
      return [["admin", null]];
    case "stats_queue":
      return [["read", req.queue]];
    case "stats":
      return req.section === "reset" ? [["admin", null]] : [];
    case "refresh_certs":
      return [["admin", null]];
    case "redrive":
      return [["admin", req.from], ["admin", req.to]];
    default:
      return [];
  }
}
