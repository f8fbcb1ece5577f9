/**
 * The process around the protocol, as an operator deploys it (issue 9, item 12): switching
 * users, the unix socket, the environment, file modes.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { chmodSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { runCommand, serverCommand, set, startServer, stopAll, tempDir, value } from "./harness";

afterAll(stopAll);

const root = process.getuid?.() === 0;
const hasSetpriv = Bun.spawnSync(["setpriv", "--version"]).exitCode === 0;

/** The Uid:, Gid: and Groups: lines of a process. */
function credentials(pid: number): string[] {
  return readFileSync(`/proc/${pid}/status`, "utf8")
    .split("\n")
    .filter((l) => /^(Uid|Gid|Groups):/.test(l))
    .map((l) => l.trimEnd());
}

describe("-u", () => {
  // Started with supplementary groups (setpriv), which the switch must drop.
  test.skipIf(!root || !hasSetpriv)("issue 9: -u nobody runs with nobody's uid and primary group, and no other group", async () => {
    const id = (flag: string) => Number(Bun.spawnSync(["id", flag, "nobody"]).stdout.toString().trim());
    const [uid, gid] = [id("-u"), id("-g")];
    const dir = tempDir();
    chmodSync(dir, 0o755); // nobody must reach the data directory inside
    const home = join(dir, "a", "data");
    const s = await startServer(["-u", "nobody"], home, ["setpriv", "--groups", "4,24", ...serverCommand()]);
    const c = await s.connect();
    expect(await c.call(set("u", "1") + "get u\r\n")).toBe("STORED\r\n" + value("u", "1") + "END\r\n");
    expect(credentials(s.proc.pid)).toEqual([`Uid:\t${uid}\t${uid}\t${uid}\t${uid}`, `Gid:\t${gid}\t${gid}\t${gid}\t${gid}`, "Groups:"]);
    // The directories it made as root belong to nobody, who writes in them.
    for (const d of [home, join(dir, "a")]) expect([statSync(d).uid, statSync(d).gid]).toEqual([uid, gid]);
    expect(statSync(join(home, "mcq.db")).uid).toBe(uid);
    expect(await s.kill()).toBe(0);
  });

  test.skipIf(!root)("issue 9: -u with an unknown user is one line naming it, exit 1", async () => {
    const r = await runCommand(["-p", "0", "-H", join(tempDir(), "data"), "-u", "no-such-user-mcq"]);
    expect([r.code, r.stderr]).toEqual([1, "mcq: no such user 'no-such-user-mcq'\n"]);
  });
});
