/**
 * -u <user>: the account to run as, and the switch to it. A user name is not a group name
 * (Debian's nobody has the group nogroup), so the group is the account's primary group from
 * the passwd database, and the supplementary groups root had are dropped.
 */
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";

export interface Account {
  name: string;
  uid: number;
  /** The primary group. */
  gid: number;
}

/** A passwd line (name:password:uid:gid:…) as an Account, if `user` is its name or its uid. */
function match(line: string, user: string): Account | null {
  const [name, , uid, gid] = line.split(":");
  if (name === undefined || uid === undefined || gid === undefined) return null;
  if (name !== user && uid !== user) return null;
  if (!/^\d+$/.test(uid) || !/^\d+$/.test(gid)) return null;
  return { name, uid: Number(uid), gid: Number(gid) };
}

/**
 * The account named `user` (or whose uid it is), or null. /etc/passwd first: it is all there
 * is on a minimal image without getent; then getent, for accounts of a directory service.
 */
export function lookupUser(user: string, passwdFile = "/etc/passwd"): Account | null {
  let text = "";
  try {
    text = readFileSync(passwdFile, "utf8");
  } catch {
    // No passwd file: only getent can tell.
  }
  for (const line of text.split("\n")) {
    const account = match(line, user);
    if (account !== null) return account;
  }
  const getent = spawnSync("getent", ["passwd", user], { encoding: "utf8" });
  if (getent.status !== 0 || typeof getent.stdout !== "string") return null;
  return match(getent.stdout.trim(), user);
}

/**
 * Becomes `account`, for good. The order matters: setgroups and setgid need root, which
 * setuid gives up.
 */
export function switchUser(account: Account): void {
  process.setgroups!([]);
  process.setgid!(account.gid);
  process.setuid!(account.uid);
}
