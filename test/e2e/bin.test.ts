/**
 * bin/mcq.js, the package's `mcq` command, as npx runs it (Node) and as bunx does (Bun): under
 * Node it needs bun on PATH and says so when it is missing; it passes arguments, output, exit
 * codes and SIGTERM through to the server. The installed tarball is tried by .ci/run
 * (scripts/pack-check.sh).
 */
import { afterAll, describe, expect, test } from "bun:test";
import { symlinkSync } from "node:fs";
import { join, resolve } from "node:path";
import pkg from "../../package.json";
import { cleanup, Client, readLine, set, tempDir, value } from "./harness";

const BIN = resolve(import.meta.dir, "../../bin/mcq.js");
/** What --version prints: the version, and the Bun and SQLite a bug report needs. */
const VERSION_LINE = expect.stringMatching(new RegExp(`^mcq ${pkg.version.replace(/\./g, "\\.")} \\(bun [^,]+, sqlite [^)]+\\)\n$`));
const node = Bun.which("node");

/** A PATH holding node, and bun too when asked: nothing else of this machine's. */
const dirs: string[] = [];
function pathWith(withBun: boolean): string {
  const dir = tempDir("mcq-path-");
  dirs.push(dir);
  symlinkSync(node!, join(dir, "node"));
  if (withBun) symlinkSync(process.execPath, join(dir, "bun"));
  return dir;
}
afterAll(() => dirs.forEach(cleanup));

/** The environment npx gives a bin, minus what would tell it a Bun ran it. */
function env(path: string): Record<string, string> {
  const { npm_config_user_agent: _agent, npm_execpath: _execpath, ...rest } = process.env;
  return { ...rest, PATH: path } as Record<string, string>;
}

async function run(command: string[], environment: Record<string, string>) {
  const proc = Bun.spawn(command, { env: environment, stdout: "pipe", stderr: "pipe" });
  const [stdout, stderr, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  return { stdout, stderr, code };
}

describe.skipIf(node === null)("under Node (npx)", () => {
  test("without bun on PATH: exit 1 and a message that says what to install", async () => {
    const got = await run([node!, BIN, "--version"], env(pathWith(false)));
    expect(got).toEqual({
      stdout: "",
      stderr: "mcq: mcq runs on Bun, and no `bun` was found on PATH.\n" +
        "Install Bun (https://bun.sh, or `npm install -g bun`) and run this again, or run `bunx mcq` instead.\n",
      code: 1,
    });
  });

  test("with bun on PATH: the server's output and exit codes", async () => {
    const path = pathWith(true);
    expect(await run([node!, BIN, "--version"], env(path))).toEqual({ stdout: VERSION_LINE, stderr: "", code: 0 });
    const bad = await run([node!, BIN, "--max-body", "x"], env(path));
    expect([bad.code, bad.stdout]).toEqual([2, ""]);
    expect(bad.stderr).toStartWith("mcq: option '-B, --max-body <num>' argument 'x' is invalid.");
  });

  test("under bunx, which names itself in the environment instead of PATH, that Bun runs the server", async () => {
    const environment = { ...env(pathWith(false)), npm_config_user_agent: `bun/${Bun.version} npm/? node/v20`, npm_execpath: process.execPath };
    expect(await run([node!, BIN, "--version"], environment)).toEqual({ stdout: VERSION_LINE, stderr: "", code: 0 });
  });

  test("SIGTERM to it stops the server cleanly: exit 0, and what was stored is there at the next start", async () => {
    const home = join(tempDir(), "data");
    const path = pathWith(true);
    const start = () => Bun.spawn([node!, BIN, "-p", "0", "-H", home], { env: env(path), stdout: "pipe", stderr: "pipe" });
    const first = start();
    const line = await readLine(first.stdout, (l) => l.includes(" listening on "));
    const c = await Client.connect(Number(/:(\d+)$/.exec(line!)![1]));
    expect(await c.call(set("q", "kept"))).toBe("STORED\r\n");
    first.kill("SIGTERM");
    expect(await first.exited).toBe(0);
    expect(await c.closedBy()).toBe("");

    const second = start(); // the data directory's lock was released: the first server is gone
    const again = await readLine(second.stdout, (l) => l.includes(" listening on "));
    const d = await Client.connect(Number(/:(\d+)$/.exec(again!)![1]));
    expect(await d.call("get q\r\n")).toBe(value("q", "kept") + "END\r\n");
    second.kill("SIGTERM");
    expect(await second.exited).toBe(0);
    cleanup(resolve(home, ".."));
  });
});

test("under Bun (bunx): the server runs in the same process", async () => {
  const got = await run([process.execPath, BIN, "--version"], env(pathWith(false)));
  expect(got).toEqual({ stdout: VERSION_LINE, stderr: "", code: 0 });
});
