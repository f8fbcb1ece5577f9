/**
 * `mcq passwd <user>`: prints an authfile line (-Y) whose password is a Bun.password hash, so the
 * file holds no plain password. The password is read from the terminal without echo, or as the
 * first line of stdin when it is not a terminal (`echo pw | mcq passwd alice`).
 */
import { parseRights } from "../rights";
import { ToolError } from "./datadir";

export interface PasswdOptions {
  algorithm: "argon2id" | "bcrypt";
  rights?: string;
}

export async function passwd(user: string, o: PasswdOptions, out: (line: string) => void): Promise<number> {
  if (user === "" || /[\s:]/.test(user)) throw new ToolError(`mcq passwd: '${user}' cannot be a user name (no spaces, no ':')`);
  if (o.rights !== undefined) {
    try {
      parseRights(o.rights);
    } catch (e) {
      throw new ToolError(`mcq passwd: --rights ${o.rights}: ${(e as Error).message}`);
    }
  }
  const password = await readPassword(`password for ${user}: `);
  if (password === "") throw new ToolError("mcq passwd: empty password");
  const hash = await Bun.password.hash(password, o.algorithm);
  out(`${user}:${hash}${o.rights === undefined ? "" : `:${o.rights}`}`);
  return 0;
}

async function readPassword(prompt: string): Promise<string> {
  const tty = process.stdin.isTTY === true;
  const stty = (arg: string) => Bun.spawnSync(["stty", arg], { stdin: "inherit" });
  if (tty) {
    process.stderr.write(prompt);
    stty("-echo");
  }
  try {
    for await (const line of console) return line.replace(/\r$/, "");
    return "";
  } finally {
    if (tty) {
      stty("echo");
      process.stderr.write("\n");
    }
  }
}
