/**
 * Running a server for real: the daemon's start failures, the log file and SIGHUP, signals that
 * must not stop it, the start and stop lines, JSON logs, errors that name their cause, help.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Client, readLine, runCommand, serverCommand, set, startServer, stopAll, tempDir, value } from "./harness";

afterAll(stopAll);

/** Waits until `file` holds a line containing `text` (the server writes its log synchronously). */
async function logged(file: string, text: string, timeoutMs = 10_000): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const content = existsSync(file) ? readFileSync(file, "utf8") : "";
    if (content.includes(text)) return content;
    if (Date.now() > deadline) throw new Error(`${file} never said ${JSON.stringify(text)}; it holds ${JSON.stringify(content)}`);
    await Bun.sleep(10); // polls a file another process writes: there is no event to await
  }
}

async function waitGone(pid: number): Promise<void> {
  for (let i = 0; i < 1000; i++) {
    try {
      process.kill(pid, 0);
    } catch {
      return;
    }
    await Bun.sleep(10);
  }
  throw new Error(`process ${pid} still running`);
}

describe("-d", () => {
  test("a start failure is said on the terminal, and the parent exits 1", async () => {
    const first = await startServer();
    const dir = tempDir();
    for (const [args, message] of [
      [["-p", String(first.port), "-H", join(dir, "a")], `cannot listen on 127.0.0.1:${first.port}: address already in use`],
      [["-p", "0", "-H", first.home], `${join(first.home, "mcq.db")} is in use by another mcq process`],
      [["-p", "0", "-H", join(dir, "b"), "-P", join(dir, "no", "mcq.pid")], `cannot write the pid file ${join(dir, "no", "mcq.pid")}: no such file or directory`],
    ] as const) {
      const r = await runCommand(["-d", "-l", "127.0.0.1", ...args]);
      expect([r.code, r.stdout]).toEqual([1, ""]);
      expect(r.stderr.trimEnd().split("\n").filter((l) => l.startsWith("mcq: "))).toEqual([expect.stringContaining(message)]);
    }
    await first.kill();
  });

  test("-d -Hmydata keeps the d of the value; the log goes to --log-file; TERM stops it with a stop line", async () => {
    const dir = tempDir();
    const pidFile = join(dir, "mcq.pid");
    const log = join(dir, "mcq.log");
    const proc = Bun.spawn([...serverCommand(), "-dl127.0.0.1", "-p0", "-P", pidFile, "--log-file", log, "-Hmydata"], {
      cwd: dir, stdin: "ignore", stdout: "pipe", stderr: "pipe",
    });
    expect(await proc.exited).toBe(0);
    const port = Number(/listening on 127\.0\.0\.1:(\d+)\n$/.exec(await new Response(proc.stdout).text())?.[1]);
    expect(existsSync(join(dir, "mydata", "mcq.db"))).toBe(true);
    const c = await Client.connect(port);
    expect(await c.call(set("d", "1") + "get d\r\n")).toBe("STORED\r\n" + value("d", "1") + "END\r\n");
    c.close();
    const pid = Number(readFileSync(pidFile, "utf8"));
    expect(await logged(log, "INFO started: 0 queues")).toContain(`data in ${join(dir, "mydata")}, sync full`);
    process.kill(pid, "SIGTERM");
    await waitGone(pid);
    expect(await logged(log, "stopped after")).toMatch(/ INFO stopped after \d+\.\d s: 1 connections, 1 sets, 1 gets \(1 hits\); 1 queues, 0 messages left\n$/);
    expect(existsSync(pidFile)).toBe(false);
  });
});

describe("signals", () => {
  test("HUP reopens --log-file (after logrotate moved it); HUP, USR1 and USR2 do not stop the server", async () => {
    const dir = tempDir();
    const log = join(dir, "mcq.log");
    const s = await startServer(["--log-file", log]);
    await logged(log, "started:");
    renameSync(log, `${log}.1`);
    s.proc.kill("SIGHUP");
    expect(await logged(log, "SIGHUP")).toMatch(/^\S+ INFO SIGHUP: reloaded the log file \S+mcq\.log\n$/);
    s.proc.kill("SIGUSR1");
    await logged(log, "SIGUSR1: ignored");
    s.proc.kill("SIGUSR2");
    await logged(log, "SIGUSR2: ignored");
    const c = await s.connect();
    expect(await c.call(set("q", "still") + "get q\r\n")).toBe("STORED\r\n" + value("q", "still") + "END\r\n");
    expect(readFileSync(`${log}.1`, "utf8")).toContain(" INFO started: ");
    expect(s.stderr()).toBe(""); // with --log-file, nothing on stderr
    expect(await s.kill("SIGINT")).toBe(0);
    expect(readFileSync(log, "utf8")).toContain(" INFO stopped after ");
  });
});

describe("logs", () => {
  test("the start line counts queues, messages, and the open messages returned to their queues", async () => {
    const s = await startServer();
    const c = await s.connect();
    await c.call(set("a", "1") + set("a", "2") + set("b", "3") + "get a/open\r\n");
    expect(await s.kill("SIGKILL")).not.toBe(0);
    const again = await startServer([], s.home);
    expect(again.stderr()).toContain(` INFO started: 2 queues, 3 messages, 1 open messages returned to their queues; data in ${s.home}, `);
  });

  test("--log-format json: every line on stderr is a JSON object, a start failure's too", async () => {
    const s = await startServer(["--log-format", "json", "-t", "4"]);
    expect(await s.kill()).toBe(0);
    const lines = s.stderr().trimEnd().split("\n").map((l) => JSON.parse(l) as { level: string; msg: string });
    expect(lines.map((l) => l.msg.split(" ")[0])).toEqual(["accepted", "started:", "SIGTERM:", "stopped"]);
    const file = join(tempDir(), "file");
    writeFileSync(file, "x");
    const r = await runCommand(["--log-format", "json", "-p", "0", "-H", file]);
    expect(r.code).toBe(1);
    expect(JSON.parse(r.stderr)).toEqual({ time: expect.any(String), level: "error", msg: `-H ${file}: not a directory (it is a file)` });
  });

  test("a relative -H is logged as an absolute path", async () => {
    const dir = tempDir();
    const proc = Bun.spawn([...serverCommand(), "-p", "0", "-H", "rel"], { cwd: dir, stdin: "ignore", stdout: "pipe", stderr: "pipe" });
    expect(await readLine(proc.stdout, (l) => l.includes(" listening on "))).not.toBeNull();
    proc.kill();
    expect(await proc.exited).toBe(0);
    expect(await new Response(proc.stderr).text()).toContain(`data in ${join(dir, "rel")}, sync full`);
  });
});

describe("errors name the path or the user, and the reason, in one line", () => {
  async function oneLine(args: string[], message: string, code = 1) {
    const r = await runCommand(args);
    expect([r.code, r.stdout, r.stderr]).toEqual([code, "", `mcq: ${message}\n`]);
  }

  test("a data directory this user cannot write", async () => {
    const home = join(tempDir(), "ro");
    mkdirSync(home);
    chmodSync(home, 0o500);
    // root writes anywhere: it runs as nobody (-u), who cannot enter a directory of root's.
    if (process.getuid?.() === 0) {
      await oneLine(["-p", "0", "-H", home, "-u", "nobody"], `cannot use the data directory ${home}: permission denied (mcq runs as user nobody, who needs to write there)`);
      return;
    }
    const r = await runCommand(["-p", "0", "-H", home]);
    expect([r.code, r.stderr]).toEqual([1, expect.stringMatching(new RegExp(`^mcq: cannot use the data directory ${home}: permission denied \\(mcq runs as user \\S+, who needs to write there\\)\n$`))]);
  });

  test("-H naming a file", async () => {
    const file = join(tempDir(), "f");
    writeFileSync(file, "x");
    await oneLine(["-p", "0", "-H", file], `-H ${file}: not a directory (it is a file)`);
  });

  test("a unix socket in a directory that does not exist", async () => {
    const dir = join(tempDir(), "missing");
    await oneLine(["-s", join(dir, "mcq.sock"), "-H", join(tempDir(), "d")], `cannot listen on ${join(dir, "mcq.sock")}: the directory ${dir}: no such file or directory`);
  });

  test("-u naming no user", async () => {
    await oneLine(["-p", "0", "-H", join(tempDir(), "d"), "-u", "nosuchuser"], "-u nosuchuser: no such user (not in /etc/passwd, nor known to getent)");
  });
});

describe("help and suggestions", () => {
  test("--help lists the subcommands; mcq help <cmd> prints that command's flags", async () => {
    const r = await runCommand(["--help"]);
    expect(r.code).toBe(0);
    for (const name of ["check", "dump", "load", "stats", "help"]) expect(r.stdout).toMatch(new RegExp(`\\n  ${name} +\\S`));
    expect((await runCommand(["help"])).stdout).toBe(r.stdout);
    const load = await runCommand(["help", "load"]);
    expect([load.code, load.stdout.split("\n")[0]]).toEqual([0, "Usage: mcq load [options] <file>"]);
    expect(load.stdout).toContain("--append");
  });

  test("a misspelt command, flag or help topic gets one line with a suggestion, and exit 2", async () => {
    for (const [args, line] of [
      [["--prot", "1"], "mcq: unknown option '--prot' (did you mean --port?)"],
      [["chek"], "mcq: unknown command 'chek' (did you mean check?)"],
      [["frobnicate"], "mcq: unknown command 'frobnicate' (see mcq --help)"],
      [["-p", "0", "dupm"], "mcq: unexpected argument 'dupm' (did you mean dump?)"],
      [["help", "lod"], "mcq help: unknown command 'lod' (did you mean load?)"],
      [["dump", "--hme", "x"], "mcq dump: unknown option '--hme' (did you mean --home?)"],
    ] as const) {
      expect(await runCommand([...args])).toEqual({ code: 2, stdout: "", stderr: `${line}\n` });
    }
  });

  test("nonsense values are refused with exit 2: -B 0, -c 0, -m 0, a -B past SQLite's limit", async () => {
    for (const args of [["-B", "0"], ["-B", "1000000001"], ["-c", "0"], ["-m", "0"], ["--max-open", "0"]]) {
      const r = await runCommand(args);
      expect([r.code, r.stderr.split("\n").length]).toEqual([2, 2]);
      expect(r.stderr).toContain(`argument '${args[1]}' is invalid`);
    }
  });

  test("-i prints the license itself", async () => {
    const r = await runCommand(["-i"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toStartWith("MIT License\n");
    expect(r.stdout).toContain("Permission is hereby granted");
  });
});
