/**
 * The process around the protocol, as an operator deploys it (issue 9, item 12): switching
 * users, the unix socket, the environment, file modes.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { chmodSync, lstatSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import pkg from "../../package.json";
import { readLine, runCommand, serverCommand, set, startServer, stopAll, tempDir, value } from "./harness";

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
    expect([r.code, r.stderr]).toEqual([1, "mcq: -u no-such-user-mcq: no such user (not in /etc/passwd, nor known to getent)\n"]);
  });
});

/** A server on a unix socket, once it has printed its listening line. */
async function listenOn(path: string, home: string) {
  const proc = Bun.spawn([...serverCommand(), "-s", path, "-H", home], { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  const line = await readLine(proc.stdout, (l) => l.includes(" listening on "));
  if (line === null) throw new Error(`server did not start: ${await new Response(proc.stderr).text()}`);
  return proc;
}

/** Sends `data` on a unix socket and returns what comes back up to the end of the last `END`. */
function unixCall(path: string, data: string, ends = 1): Promise<string> {
  return new Promise((ok, fail) => {
    let got = "";
    Bun.connect({
      unix: path,
      socket: {
        open: (sock) => void sock.write(data),
        data: (sock, d) => {
          got += d.toString("latin1");
          if (got.split("END\r\n").length > ends) {
            sock.end();
            ok(got);
          }
        },
      },
    }).catch(fail);
  });
}

describe("-s", () => {
  test("issue 9: a unix socket a live server answers on is refused, exit 1; a stale one is replaced", async () => {
    const dir = tempDir();
    const path = join(dir, "mcq.sock");
    const first = await listenOn(path, join(dir, "d1"));
    try {
      const r = await runCommand(["-s", path, "-H", join(dir, "d2")], 10_000);
      expect([r.code, r.stderr]).toEqual([1, `mcq: cannot listen on ${path}: a server is already listening there\n`]);
      // The first server still has its socket.
      expect(await unixCall(path, set("s", "1") + "get s\r\n" + set("s", "2") + "get nothing\r\n", 2)).toBe(
        "STORED\r\n" + value("s", "1") + "END\r\nSTORED\r\nEND\r\n",
      );
    } finally {
      first.kill("SIGKILL");
      await first.exited;
    }
    // A server killed with -9 leaves its socket file; the next one on that path takes it.
    expect(lstatSync(path).isSocket()).toBe(true);
    const second = await listenOn(path, join(dir, "d1"));
    try {
      expect(await unixCall(path, "get s\r\n")).toBe(value("s", "2") + "END\r\n");
    } finally {
      second.kill();
      expect(await second.exited).toBe(0);
    }
  });

  test("issue 9: a file at the -s path that is not a socket is left alone, exit 1", async () => {
    const path = join(tempDir(), "not-a-socket");
    writeFileSync(path, "keep");
    const r = await runCommand(["-s", path, "-H", join(tempDir(), "data")], 10_000);
    expect(r.code).toBe(1);
    expect(r.stderr).toStartWith(`mcq: cannot listen on ${path}: `);
    expect(readFileSync(path, "utf8")).toBe("keep");
  });
});

describe("environment", () => {
  /** Starts a server with `env` added to the environment; its listening line and its stderr. */
  async function startWithEnv(args: string[], env: Record<string, string>) {
    const proc = Bun.spawn([...serverCommand(), ...args], { env: { ...process.env, ...env }, stdin: "ignore", stdout: "pipe", stderr: "pipe" });
    const line = await readLine(proc.stdout, (l) => l.includes(" listening on "));
    proc.kill();
    const code = await proc.exited;
    return { line, code, stderr: await new Response(proc.stderr).text() };
  }

  // The port comes from the file (0: any free port), which MCQ_PORT would override if it were
  // taken as the setting; -p would hide the problem, since a flag wins over the environment.
  test("issue 9: a Kubernetes Service named mcq (MCQ_PORT=tcp://…) does not stop the server", async () => {
    const dir = tempDir();
    writeFileSync(join(dir, "mcq.toml"), `port = 0\nhome = "${join(dir, "data")}"\n`);
    const r = await startWithEnv(["-l", "127.0.0.1", "--config", join(dir, "mcq.toml")], {
      MCQ_PORT: "tcp://10.0.0.1:22201",
      MCQ_PORT_22201_TCP: "tcp://10.0.0.1:22201",
      MCQ_PORT_22201_TCP_PROTO: "tcp",
      MCQ_PORT_22201_TCP_PORT: "22201",
      MCQ_PORT_22201_TCP_ADDR: "10.0.0.1",
      MCQ_SERVICE_HOST: "10.0.0.1",
      MCQ_SERVICE_PORT: "22201",
    });
    expect(r.line).toMatch(/ listening on 127\.0\.0\.1:\d+$/);
    expect(r.line).not.toEndWith(":22201");
    expect(r.code).toBe(0);
    expect(r.stderr).toContain(" INFO MCQ_PORT=tcp://10.0.0.1:22201 looks like a Kubernetes service link, not a setting: ignored\n");
  });

  test("issue 9: MCQ_PORT as a number is still the port setting", async () => {
    const r = await startWithEnv(["-l", "127.0.0.1", "-H", join(tempDir(), "data")], { MCQ_PORT: "0" });
    expect(r.line).toMatch(/ listening on 127\.0\.0\.1:\d+$/);
    expect(r.line).not.toEndWith(":22201");
    expect(r.code).toBe(0);
  });
});

describe("file modes", () => {
  test("issue 9: the data directory and every file in it are the owner's alone", async () => {
    const s = await startServer();
    const c = await s.connect();
    expect(await c.call(set("m", "secret"))).toBe("STORED\r\n");
    const modes = Object.fromEntries(readdirSync(s.home).map((f) => [f, (statSync(join(s.home, f)).mode & 0o777).toString(8)]));
    expect(modes).toEqual({ "backup.sock": "600", "mcq.db": "600", "mcq.db-wal": "600", "mcq.reserve": "600" });
    expect((statSync(s.home).mode & 0o777).toString(8)).toBe("700");
    expect(await s.kill()).toBe(0);
  });

  test("issue 9: the pid file stays readable by all", async () => {
    const pidFile = join(tempDir(), "mcq.pid");
    const s = await startServer(["-P", pidFile]);
    expect((statSync(pidFile).mode & 0o777).toString(8)).toBe("644");
    expect(await s.kill()).toBe(0);
  });
});

describe("fsync failure", () => {
  test.skipIf(process.env.MCQ_BIN !== undefined)("issue 9: an fsync that fails stops the server: SERVER_ERROR, one log line, exit 1", async () => {
    const [bun, ...script] = serverCommand();
    const s = await startServer([], undefined, [bun!, "--preload", join(import.meta.dir, "fsync-fault.ts"), ...script]);
    const c = await s.connect();
    expect(await c.call(set("f", "kept"))).toBe("STORED\r\n");
    writeFileSync(join(s.home, "fail-fsync"), "");
    c.write(set("f", "lost") + "version\r\n");
    // The request already read is answered, then the process ends and so does the connection.
    expect(await c.closedBy()).toBe(`SERVER_ERROR I/O error (SQLITE_IOERR_FSYNC)\r\nVERSION ${pkg.version}\r\n`);
    expect(await s.proc.exited).toBe(1);
    for (let i = 0; i < 100 && !s.stderr().includes("stopping (exit 1)"); i++) await Bun.sleep(10);
    expect(s.stderr().split("\n").filter((l) => l.includes("stopping (exit 1)")).map((l) => l.replace(/^\S+ /, ""))).toEqual([
      "ERROR I/O error (SQLITE_IOERR_FSYNC): what is on disk may not be what was acknowledged; stopping (exit 1)",
    ]);
    // The next start recovers what was acknowledged, and only that.
    const again = await startServer([], s.home);
    const d = await again.connect();
    expect(await d.call("get f\r\nget f\r\n")).toBe(value("f", "kept") + "END\r\nEND\r\n");
    expect(await again.kill()).toBe(0);
  });
});
