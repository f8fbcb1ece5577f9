/**
 * A rolling upgrade on Postgres (docs/design.md): a node of schema version 2 (the source at
 * V2_COMMIT, taken from git history) keeps running while a version-3 node migrates the schema
 * beside it. Neither stops; messages pass between them; the newer node counts what it counts
 * exactly. What the older node does not count is asserted as documented: its fanout_refused stays
 * in its memory, its discard_old refuses, and its fold of a reaped newer node's rows drops that
 * node's dead_letter_skipped and fanout_refused. Once the schema is version 3, a version-2 node
 * no longer starts.
 */
import { afterAll, expect, test } from "bun:test";
import { join, resolve } from "node:path";
import { dropSchemas, freshSchema, havePostgres, pgStoreUrl } from "../pg";
import { queueStats, set, startServer, stopAll, tempDir, value, type Client } from "./harness";

/** The last commit whose Postgres schema is version 2 (pgtx3 before issue 12's remaining gaps). */
const V2_COMMIT = "483d4fe";
const ROOT = resolve(import.meta.dir, "../..");
const schemas: string[] = [];

afterAll(async () => {
  await stopAll();
  await dropSchemas(schemas);
});

/** The version-2 source, unpacked from git into a temp dir; null (and why) if the history lacks it. */
async function versionTwo(): Promise<string | null> {
  const dir = tempDir();
  const git = Bun.spawnSync(["sh", "-c", `git -C '${ROOT}' archive ${V2_COMMIT} src package.json LICENSE | tar -x -C '${dir}'`], { stderr: "pipe" });
  if (git.exitCode === 0) return dir;
  const why = `rolling upgrade: commit ${V2_COMMIT} is not in this checkout's history (${git.stderr.toString().trim()})`;
  if (process.env.CI === "true") throw new Error(why);
  console.log(`skipped: ${why}`);
  return null;
}

if (havePostgres("rolling upgrade on Postgres")) {
  test("a version-2 node beside a version-3 node: neither stops, and the newer one counts exactly", async () => {
    const old = await versionTwo();
    if (old === null) return;
    const schema = freshSchema("roll");
    schemas.push(schema);
    const config = join(tempDir(), "mcq.toml");
    await Bun.write(config, '[queues."n+*"]\nmax_items = 1\n[queues."d"]\nmax_items = 1\ndiscard_old = true\n');
    const args = ["--store", pgStoreUrl(schema), "--fanout", "--config", config, "--node-timeout", "1"];
    // The old source finds this checkout's dependencies (commander) through NODE_PATH.
    const oldCommand = [process.execPath, join(old, "src/main.ts")];
    const env = { NODE_PATH: join(ROOT, "node_modules") };
    const v2 = await startServer(args, join(tempDir(), "v2"), oldCommand, env);
    const o = await v2.connect();
    // Version 2 made the schema; the child n+c is full after its first copy: one copy refused.
    expect(await o.call("get n+c\r\n" + set("n", "1") + set("n", "2"))).toBe("END\r\nSTORED\r\nSTORED\r\n");

    const v3 = await startServer(args, join(tempDir(), "v3"));
    const n = await v3.connect();
    expect(await n.call(set("n", "3") + set("d", "a") + set("d", "b"))).toBe("STORED\r\n".repeat(3));
    // The old node serves on: it refuses what its version refused (discard_old on Postgres), once
    // its view has read the counters (a stats request reads them).
    expect(await queueStats(o, "d")).toMatchObject({ items: 1 });
    expect(await o.call(set("d", "c") + set("n", "4") + "get d\r\n")).toBe("SERVER_ERROR queue full\r\nSTORED\r\n" + value("d", "b") + "END\r\n");
    // Counted in Postgres: the newer node's refusal and discard; the old node's 2 refusals only in its memory.
    expect(await queueStats(n, "n+c")).toMatchObject({ items: 1, total: 1, fanout_refused: 1 });
    expect(await queueStats(o, "n+c")).toMatchObject({ items: 1, total: 1, fanout_refused: 2 });
    expect(await queueStats(n, "d")).toMatchObject({ items: 0, total: 2, fetched: 2, discarded: 1 });

    // The newer node dies holding a message open: the old node returns it, and its fold keeps
    // only the columns it knows: the newer node's fanout_refused is gone.
    expect(await n.call(set("r", "x") + "get r/open\r\n")).toBe("STORED\r\n" + value("r/open", "x") + "END\r\n");
    expect(await v3.kill("SIGKILL")).not.toBe(0);
    expect(await o.call("get r/t=10000\r\n")).toBe(value("r/t=10000", "x") + "END\r\n");
    const again = await startServer(args, join(tempDir(), "v3b"));
    const a = await again.connect();
    expect(await queueStats(a, "n+c")).toMatchObject({ total: 1, fanout_refused: 0 });
    expect(await queueStats(a, "d")).toMatchObject({ total: 2, discarded: 1 });

    // The old node dies holding one open: the newer node returns it, and keeps serving.
    expect(await o.call(set("s", "y") + "get s/open\r\n")).toBe("STORED\r\n" + value("s/open", "y") + "END\r\n");
    expect(await v2.kill("SIGKILL")).not.toBe(0);
    expect(await a.call("get s/t=10000\r\n")).toBe(value("s/t=10000", "y") + "END\r\n");
    // Every message set on either node is there, in order.
    expect(await a.call("get n\r\n".repeat(5))).toBe(["1", "2", "3", "4"].map((b) => value("n", b) + "END\r\n").join("") + "END\r\n");
    // A version-2 node no longer starts on the migrated schema.
    const late = Bun.spawn([...oldCommand, "-p", "0", "-H", join(tempDir(), "late"), ...args], { stdout: "ignore", stderr: "pipe", env: { ...process.env, ...env } });
    const [code, stderr] = await Promise.all([late.exited, new Response(late.stderr).text()]);
    expect([code, stderr.includes(`is version 6, newer than this mcq knows (2): upgrade mcq`)]).toEqual([1, true]);
    expect(await again.kill()).toBe(0);
  }, 60_000);
}
