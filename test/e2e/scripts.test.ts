/**
 * The service files in scripts/: the System V init script runs a real server through its whole
 * life (start, status, reload, stop), and the systemd unit passes `systemd-analyze verify` and
 * its ExecStart starts a server. systemd itself cannot run here (no init system in CI's container).
 */
import { afterAll, expect, test } from "bun:test";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { Client, readLine, serverCommand, set, stopAll, tempDir, value } from "./harness";

afterAll(stopAll);

const ROOT = resolve(import.meta.dir, "../..");

async function init(defaults: string, action: string) {
  const proc = Bun.spawn(["sh", join(ROOT, "scripts/mcq.init"), action], {
    env: { ...process.env, MCQ_DEFAULTS: defaults }, stdin: "ignore", stdout: "pipe", stderr: "pipe",
  });
  const [stdout, stderr, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  return { code, stdout, stderr };
}

async function logged(file: string, text: string): Promise<string> {
  for (let i = 0; i < 1000; i++) {
    const content = existsSync(file) ? readFileSync(file, "utf8") : "";
    if (content.includes(text)) return content;
    await Bun.sleep(10); // another process writes the file: nothing to await
  }
  throw new Error(`${file} never said ${text}`);
}

test("scripts/mcq.init starts, reports, reloads and stops a server, and passes on a failed start", async () => {
  const dir = tempDir();
  const defaults = join(dir, "default-mcq");
  const log = join(dir, "log", "mcq.log");
  const pidFile = join(dir, "run", "mcq.pid");
  writeFileSync(defaults, [
    `DAEMON="${serverCommand().join(" ")}"`,
    `DAEMON_ARGS="-l 127.0.0.1 -p 0 -H ${join(dir, "data")}"`,
    `PIDFILE=${pidFile}`,
    `LOGFILE=${log}`,
  ].join("\n") + "\n");
  expect(await init(defaults, "status")).toEqual({ code: 3, stdout: "mcq is not running\n", stderr: "" });
  const started = await init(defaults, "start");
  expect(started.code).toBe(0);
  const port = Number(/^mcq \S+ listening on 127\.0\.0\.1:(\d+)\n$/.exec(started.stdout)?.[1]);
  const pid = Number(readFileSync(pidFile, "utf8"));
  const c = await Client.connect(port);
  expect(await c.call(set("i", "1") + "get i\r\n")).toBe("STORED\r\n" + value("i", "1") + "END\r\n");
  expect(await init(defaults, "status")).toEqual({ code: 0, stdout: `mcq is running (pid ${pid})\n`, stderr: "" });
  expect(await init(defaults, "start")).toEqual({ code: 0, stdout: `mcq is already running (pid ${pid})\n`, stderr: "" });
  expect((await init(defaults, "reload")).code).toBe(0);
  await logged(log, "SIGHUP: reloaded the log file");
  expect(await init(defaults, "stop")).toEqual({ code: 0, stdout: "mcq stopped\n", stderr: "" });
  expect(await logged(log, "stopped after")).toContain("INFO started: ");
  expect(existsSync(pidFile)).toBe(false);
  expect(await init(defaults, "status")).toEqual({ code: 3, stdout: "mcq is not running\n", stderr: "" });

  // A second server on the same data directory: the script says why and fails.
  const first = await init(defaults, "start");
  writeFileSync(defaults, readFileSync(defaults, "utf8").replace(`PIDFILE=${pidFile}`, `PIDFILE=${pidFile}.2`));
  const second = await init(defaults, "start");
  expect(second.code).toBe(1);
  expect(second.stderr).toContain(`${join(dir, "data", "mcq.db")} is in use by another mcq process`);
  writeFileSync(defaults, readFileSync(defaults, "utf8").replace(`PIDFILE=${pidFile}.2`, `PIDFILE=${pidFile}`));
  expect(first.code).toBe(0);
  expect(await init(defaults, "stop")).toEqual({ code: 0, stdout: "mcq stopped\n", stderr: "" });
});

test("scripts/mcq.service passes systemd-analyze verify, and its ExecStart starts a server", async () => {
  const unit = readFileSync(join(ROOT, "scripts/mcq.service"), "utf8");
  const execStart = /^ExecStart=(\S+) (.*)$/m.exec(unit)!;
  expect(execStart[1]).toBe("/usr/local/bin/mcq");
  // The comment names no settings file that nothing reads: only one given with --config is.
  expect(unit).not.toMatch(/put them in \/etc\/mcq\.toml/);
  const dir = tempDir();
  const analyze = Bun.which("systemd-analyze");
  if (analyze === null) {
    if (process.env.CI === "true") throw new Error("systemd-analyze is missing (apt-get install systemd)");
    console.log("skipped systemd-analyze verify: not installed");
  } else {
    // verify checks that the ExecStart binary exists: point it at this test's server command.
    const copy = join(dir, "mcq.service");
    writeFileSync(copy, unit.replace("/usr/local/bin/mcq", serverCommand().join(" ")));
    const r = Bun.spawnSync([analyze, "verify", copy], { stdout: "pipe", stderr: "pipe" });
    expect([r.exitCode, r.stderr.toString()]).toEqual([0, ""]);
  }
  const args = execStart[2]!.replace("/var/lib/mcq", join(dir, "data")).replace("-p 22201", "-p 0").replace("127.0.0.1:9201", "127.0.0.1:0").split(" ");
  const proc = Bun.spawn([...serverCommand(), ...args], { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  expect(await readLine(proc.stdout, (l) => l.includes(" listening on "))).toMatch(/ listening on 127\.0\.0\.1:\d+$/);
  proc.kill("SIGTERM");
  expect(await proc.exited).toBe(0);
});
