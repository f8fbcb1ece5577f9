/**
 * Postgres down or restarting, for real: the test starts a Postgres of its own (scripts/pg.sh),
 * stops it under a running mcq and starts it again. Every request gets SERVER_ERROR within a
 * bounded time while it is down (never a hang, never a false STORED), the node reconnects by
 * itself, and nothing acknowledged is lost. Then it freezes that Postgres (SIGSTOP: a partition)
 * under an idle node and stops the node.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { havePostgres } from "../pg";
import { set, startServer, stopAll, tempDir, value } from "./harness";

const ROOT = resolve(import.meta.dir, "../..");
const PG = join(ROOT, "scripts/pg.sh");

/** Runs scripts/pg.sh; returns its stdout. */
async function pg(...args: string[]): Promise<string> {
  const proc = Bun.spawn(["bash", PG, ...args], { stdout: "pipe", stderr: "pipe" });
  const [out, err, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  if (code !== 0) throw new Error(`pg.sh ${args.join(" ")}: exit ${code}: ${err}`);
  return out;
}

/** pg_ctl for the instance in `dir`, as the postgres user (Postgres refuses root). */
async function pgCtl(dir: string, action: "stop" | "start", port: string): Promise<void> {
  const bin = (await Array.fromAsync(new Bun.Glob("/usr/lib/postgresql/*/bin/pg_ctl").scan()))[0]!;
  const opts = action === "start" ? ["-o", `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1`, "-l", join(dir, "postgres.log")] : ["-m", "fast"];
  const cmd = [bin, "-D", join(dir, "data"), "-w", ...opts, action];
  const asPg = process.getuid?.() === 0 ? ["runuser", "-u", "postgres", "--", ...cmd] : cmd;
  const proc = Bun.spawn(asPg, { stdout: "ignore", stderr: "pipe" });
  if ((await proc.exited) !== 0) throw new Error(`pg_ctl ${action}: ${await new Response(proc.stderr).text()}`);
}

/** SIGSTOP or SIGCONT to the Postgres in `dir`: its postmaster and every backend. */
async function signalPostgres(dir: string, signal: "STOP" | "CONT"): Promise<void> {
  const postmaster = Number(readFileSync(join(dir, "data", "postmaster.pid"), "utf8").split("\n")[0]);
  const children = (await Bun.$`pgrep -P ${postmaster}`.nothrow().text()).trim().split("\n").filter(Boolean);
  await Bun.$`kill -${signal} ${postmaster} ${children}`.nothrow().quiet();
}

if (havePostgres("e2e postgres outage")) {
  let dir: string | null = null;
  let started: Promise<{ dir: string; url: string }> | null = null;
  /** This file's own Postgres, started once: the tests stop it and freeze it. */
  const instance = () =>
    (started ??= pg("start").then((out) => {
      const env = Object.fromEntries(out.trim().split("\n").map((l) => l.split("=", 2) as [string, string]));
      dir = env.MCQ_TEST_PG_DIR!;
      return { dir, url: env.MCQ_TEST_PG! };
    }));
  afterAll(async () => {
    await stopAll();
    if (dir !== null) await pg("stop", dir);
  });

  describe("Postgres down and back", () => {
    test("while it is down every request answers SERVER_ERROR within the timeout; then the node reconnects and has lost nothing", async () => {
      const { dir, url } = await instance();
      const port = /:(\d+)\//.exec(url)![1]!;
      const server = await startServer(["--store", `${url}?schema=outage`], join(tempDir(), "data"));
      const c = await server.connect();
      expect(await c.call(set("q", "before"))).toBe("STORED\r\n");

      await pgCtl(dir, "stop", port);
      for (const request of [set("q", "during"), "get q\r\n", "get q/open\r\n"]) {
        const at = performance.now();
        const reply = await c.call(request, 15_000);
        const took = performance.now() - at;
        expect(reply).toStartWith("SERVER_ERROR Postgres: ");
        expect(reply.split("\r\n").length).toBe(2); // one line
        expect(took).toBeLessThan(5000 + 3000); // the batch timeout, plus one host's connect timeout
      }
      // Stats answer from what the node knows, without waiting for Postgres longer than a batch.
      expect(await c.call("version\r\n", 15_000)).toStartWith("VERSION ");

      await pgCtl(dir, "start", port);
      // The node reconnects by itself: the first request after the restart may still fail once.
      let reply = "";
      for (let i = 0; i < 10 && !(reply = await c.call(set("q", "after"), 15_000)).startsWith("STORED"); i++);
      if (reply !== "STORED\r\n") console.log(server.stderr());
      expect(reply).toBe("STORED\r\n");
      expect(await c.call("get q\r\nget q\r\nget q\r\n")).toBe(value("q", "before") + "END\r\n" + value("q", "after") + "END\r\nEND\r\n");
    }, 60_000);

    test("SIGTERM with Postgres frozen and nothing in flight exits 1 within the timeout, saying the node could not leave; nothing is lost", async () => {
      const { dir: pgDir, url } = await instance();
      const home = join(tempDir(), "data");
      const server = await startServer(["--store", `${url}?schema=frozen`], home);
      const c = await server.connect();
      expect(await c.call(set("q", "a") + set("q", "b") + set("q", "c"))).toBe("STORED\r\n".repeat(3));
      await signalPostgres(pgDir, "STOP");
      let code: number | string;
      const at = performance.now();
      try {
        // Bounded here too, so that a node that never exits fails this test (and Postgres is resumed).
        const exited = server.kill("SIGTERM");
        code = await Promise.race([exited, Bun.sleep(20_000).then(() => "still running after 20 s")]);
      } finally {
        await signalPostgres(pgDir, "CONT");
      }
      const took = performance.now() - at;
      // Not a clean stop: the node's row stays for a reaper (or this -H's next start).
      expect(code).toBe(1);
      expect(took).toBeLessThan(15_000); // the store's timeout (5 s), and the stop's own flush
      expect(server.stderr()).toMatch(/ERROR stop: Postgres: node \d+ could not leave cleanly \(Postgres: no answer within 5000 ms\): its open messages return/);
      // After Postgres resumes, every message is there.
      const again = await startServer(["--store", `${url}?schema=frozen`], home);
      const d = await again.connect();
      expect(await d.call("get q\r\nget q\r\nget q\r\nget q\r\n", 15_000)).toBe(
        value("q", "a") + "END\r\n" + value("q", "b") + "END\r\n" + value("q", "c") + "END\r\nEND\r\n",
      );
      expect(await again.kill("SIGTERM")).toBe(0);
    }, 60_000);
  });
}
