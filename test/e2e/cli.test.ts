/** The command line and the process: exit codes, the listening line, flags, the data-dir lock. */
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import pkg from "../../package.json";
import { Client, readLine, runCommand, serverCommand, set, startServer, stopAll, tempDir, value } from "./harness";

afterAll(stopAll);

describe("exit codes", () => {
  test("--help lists the flags and exits 0", async () => {
    const r = await runCommand(["--help"]);
    expect(r.code).toBe(0);
    for (const flag of ["-p, --port", "-H, --home", "-B, --max-body", "-N", "--sync", "--config"]) expect(r.stdout).toContain(flag);
  });

  test("-V and --version print the version with Bun's and SQLite's, and exit 0", async () => {
    for (const flag of ["-V", "--version"]) {
      const r = await runCommand([flag]);
      expect(r.code).toBe(0);
      expect(r.stdout).toMatch(new RegExp(`^mcq ${pkg.version.replaceAll(".", "\\.")} \\(bun \\d+\\.\\d+\\.\\d+, sqlite 3\\.\\d+\\.\\d+\\)\n$`));
    }
  });

  test("an unknown flag or a bad value is one line on stderr and exit 2", async () => {
    for (const args of [["--bogus"], ["-p", "notaport"], ["-p", "70000"], ["--sync", "sometimes"], ["-a", "999"], ["extra"]]) {
      const r = await runCommand(args);
      expect(r.code).toBe(2);
      expect(r.stderr.trimEnd().split("\n").length).toBe(1);
      expect(r.stderr).toStartWith("mcq: ");
    }
  });

  test("a second server on the same data directory exits 1 and the first keeps serving", async () => {
    const first = await startServer();
    const r = await runCommand(["-p", "0", "-H", first.home]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("in use by another mcq process");
    const c = await first.connect();
    expect(await c.call(set("x", "1") + "get x\r\n")).toBe("STORED\r\n" + value("x", "1") + "END\r\n");
    await first.kill();
  });

  test("a port already in use exits 1 with a clear message", async () => {
    const first = await startServer();
    const r = await runCommand(["-l", "127.0.0.1", "-p", String(first.port), "-H", join(tempDir(), "d")]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("address already in use");
    await first.kill();
  });

  test("a pid file, unix socket or data directory that cannot be made exits 1 with one line naming it", async () => {
    const dir = tempDir();
    const file = join(dir, "a-file");
    await Bun.write(file, "x");
    for (const [args, message] of [
      [["-p", "0", "-H", join(dir, "d1"), "-P", join(dir, "no", "mcq.pid")], "cannot write the pid file"],
      [["-s", join(dir, "no", "mcq.sock"), "-H", join(dir, "d2")], "cannot listen on"],
      [["-p", "0", "-H", file], `-H ${file}: not a directory (it is a file)`],
    ] as const) {
      const r = await runCommand([...args]);
      expect(r.code).toBe(1);
      expect(r.stderr.trimEnd().split("\n").filter((l) => l.startsWith("mcq: "))).toEqual([expect.stringContaining(message)]);
    }
  });

  test("a data file that is not an mcq database exits 1 naming it", async () => {
    const home = tempDir();
    await Bun.write(join(home, "mcq.db"), "this is not a database, it is a text file of some length ".repeat(100));
    const r = await runCommand(["-p", "0", "-H", home]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(join(home, "mcq.db"));
  });
});

describe("flags", () => {
  test("the listening line names the version, host and chosen port", async () => {
    const s = await startServer();
    expect(s.port).toBeGreaterThan(0);
    await s.kill();
  });

  test("every MemcacheQ flag is accepted; the meaningless ones are named once in the log", async () => {
    const pid = join(tempDir(), "mcq.pid");
    const s = await startServer(["-t", "4", "-r", "-U", "0", "-c", "1024", "-m", "64", "-A", "4096", "-L", "32",
      "-C", "300", "-T", "30", "-S", "30", "-e", "60", "-E", "16384", "-D", "100", "-N", "-R", "-v", "-a", "0700", "-P", pid]);
    expect(readFileSync(pid, "utf8")).toBe(`${s.proc.pid}\n`);
    const c = await s.connect();
    expect(await c.call(set("f", "ok") + "get f\r\n")).toBe("STORED\r\n" + value("f", "ok") + "END\r\n");
    expect(s.stderr()).toContain("no effect here: -t -r -U -A -L -C -T -S -e -E -D -R");
    expect(await s.kill()).toBe(0);
    expect(existsSync(pid)).toBe(false);
  });

  test("-B limits the body", async () => {
    const s = await startServer(["-B", "10"]);
    const c = await s.connect();
    expect(await c.call(set("b", "x".repeat(11)) + set("b", "x".repeat(10)))).toBe(
      "SERVER_ERROR object too large for cache\r\nSTORED\r\n",
    );
    await s.kill();
  });

  test("-c refuses the connection beyond the limit, and accepts again after one closes", async () => {
    const s = await startServer(["-c", "2"]);
    const [a, b] = [await s.connect(), await s.connect()];
    await a.call("");
    await b.call("");
    // A refused connection is reset at once, so under load the reset can beat the client's own
    // connect callback: "refused" is either a connect error or a close with nothing sent.
    const served = async (): Promise<boolean> => {
      try {
        const c = await s.connect();
        c.write("version\r\n");
        const got = await c.until((buf) => buf.includes("\r\n"), 5000);
        c.close();
        return got.toString().startsWith("VERSION");
      } catch {
        return false;
      }
    };
    expect(await served()).toBe(false);
    a.close();
    // The server sees the close asynchronously: retry until a fresh connection is served.
    while (!(await served()));
    await s.kill();
  });

  test("-s listens on a unix socket with mode 0700", async () => {
    const dir = tempDir();
    const path = join(dir, "mcq.sock");
    const proc = Bun.spawn([...serverCommand(), "-s", path, "-H", join(dir, "data")], {
      stdout: "pipe",
      stderr: "pipe",
    });
    const line = await readLine(proc.stdout, (l) => l.includes("listening on"));
    expect(line).toBe(`mcq ${pkg.version} listening on ${path}`);
    expect(statSync(path).mode & 0o777).toBe(0o700);
    const reply = await new Promise<string>((ok) => {
      let got = "";
      void Bun.connect({
        unix: path,
        socket: {
          open: (sock) => void sock.write("set u 0 0 1\r\nx\r\nget u\r\n"),
          data: (sock, d) => {
            got += d.toString();
            if (got.endsWith("END\r\n")) {
              sock.end();
              ok(got);
            }
          },
        },
      });
    });
    expect(reply).toBe("STORED\r\n" + value("u", "x") + "END\r\n");
    proc.kill();
    expect(await proc.exited).toBe(0);
  });

  test("--expiry: an expired message is never returned", async () => {
    const s = await startServer(["--expiry"]);
    const c = await s.connect();
    expect(await c.call("set e 0 1000000000 4\r\npast\r\nset e 0 0 5\r\nnever\r\nset e 0 3600 4\r\nhour\r\n")).toBe("STORED\r\n".repeat(3));
    expect(await c.call("get e\r\nget e\r\nget e\r\n")).toBe(value("e", "never") + "END\r\n" + value("e", "hour") + "END\r\nEND\r\n");
    expect(await c.call("stats\r\n")).toContain("STAT expired_items 1\r\n");
    await s.kill();
  });

  test("-d runs a detached daemon that writes -P and answers", async () => {
    const dir = tempDir();
    const pidFile = join(dir, "mcq.pid");
    const r = await runCommand(["-d", "-l", "127.0.0.1", "-p", "0", "-H", join(dir, "data"), "-P", pidFile]);
    expect(r.code).toBe(0);
    const port = Number(/listening on 127\.0\.0\.1:(\d+)$/.exec(r.stdout.trim())?.[1]);
    const pid = Number(readFileSync(pidFile, "utf8"));
    const c = await Client.connect(port);
    expect(await c.call(set("d", "1") + "get d\r\n")).toBe("STORED\r\n" + value("d", "1") + "END\r\n");
    c.close();
    process.kill(pid, "SIGTERM");
    for (let i = 0; i < 500 && existsSync(pidFile); i++) await Bun.sleep(10);
    expect(existsSync(pidFile)).toBe(false);
  });

  test("-vv logs every command, one line each", async () => {
    const s = await startServer(["-vv"]);
    const c = await s.connect();
    await c.call(set("vv", "x") + "get vv/open vv2/t=10\r\nbogus\r\n");
    for (let i = 0; i < 100 && !s.stderr().includes("(refused)"); i++) await Bun.sleep(10);
    const lines = s.stderr().split("\n").filter((l) => l.includes(" TRACE <"));
    expect(lines.map((l) => l.replace(/^\S+ TRACE <\d+ /, ""))).toEqual([
      "set vv 0 0 1",
      "get vv/open vv2/t=10",
      "(refused) ERROR",
      "version",
    ]);
  });

  test("-H is created if missing", async () => {
    const home = join(tempDir(), "a", "b");
    const s = await startServer([], home);
    expect(existsSync(join(home, "mcq.db"))).toBe(true);
    await s.kill();
  });
});

describe("settings from the environment and a config file", () => {
  test("flags win over MCQ_* variables, which win over the file, which wins over defaults", async () => {
    const dir = tempDir();
    const file = join(dir, "mcq.toml");
    await Bun.write(file, `max-body = 10\nhome = "${join(dir, "from-file")}"\nsync = "normal"\nexpiry = true\nlog-format = "json"\n`);
    const proc = Bun.spawn([...serverCommand(), "--config", file, "-p", "0", "-B", "20"], {
      env: { ...process.env, MCQ_HOME: join(dir, "from-env") },
      stdout: "pipe",
      stderr: "pipe",
    });
    expect(await readLine(proc.stdout, (l) => l.includes("listening on"))).toContain("listening on 127.0.0.1:");
    proc.kill();
    expect(await proc.exited).toBe(0);
    const log = await new Response(proc.stderr).text();
    const first = JSON.parse(log.split("\n")[0]!) as { level: string; msg: string };
    expect(first.level).toBe("info");
    // -B from the flag, -H from the environment, sync from the file.
    expect(first.msg).toBe(`started: 0 queues, 0 messages, 0 open messages returned to their queues; ` +
      `data in ${join(dir, "from-env")}, sync normal, max body 20 bytes`);
    expect(existsSync(join(dir, "from-file"))).toBe(false);
  });

  test("an unknown key or a bad value in the file is one line and exit 2", async () => {
    const dir = tempDir();
    for (const [body, message] of [["colour = 3\n", "unknown key colour"], ["port = \"many\"\n", "port = many"], ["sync = \"sometimes\"\n", "sync must be one of"]]) {
      await Bun.write(join(dir, "bad.toml"), body!);
      const r = await runCommand(["--config", join(dir, "bad.toml")]);
      expect(r.code).toBe(2);
      expect(r.stderr).toContain(message!);
      expect(r.stderr.trimEnd().split("\n").length).toBe(1);
    }
  });
});
