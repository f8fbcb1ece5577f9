/**
 * Real third-party memcache clients against mcq: Python's pymemcache, the npm `memcached`
 * package and libmemcached's command-line tools. Each sets messages with flags, reads them back
 * in FIFO order, does a multi-get and deletes a queue. CI installs them (.ci/run); where one is
 * missing outside CI the test is skipped with a message saying how to install it.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
// @ts-expect-error: the package ships no types
import Memcached from "memcached";
import { startServer, stopAll, tempDir, type Running } from "./harness";
import { dropStoreSchemas, startOn, STORES } from "./stores";

let server: Running;
beforeAll(async () => {
  server = await startServer();
});
afterAll(async () => {
  await stopAll();
  await dropStoreSchemas();
});

const PYTHON = "/usr/bin/python3";
const hasPymemcache = Bun.spawnSync([PYTHON, "-c", "import pymemcache"]).exitCode === 0;
const hasLibmemcached = Bun.which("memccp") !== null && Bun.which("memccat") !== null;

/** Missing in CI: fail. Missing elsewhere: skip, and say so. */
function available(name: string, present: boolean, install: string): boolean {
  if (present) return true;
  if (process.env.CI) throw new Error(`${name} is missing in CI: ${install}`);
  console.warn(`SKIPPED: ${name} is not installed (${install})`);
  return false;
}

test.skipIf(!available("pymemcache", hasPymemcache, "apt-get install python3-pymemcache"))("pymemcache", () => {
  const script = `
from pymemcache.client.base import Client
class Raw:
    def serialize(self, key, value): return value, int(value[-1:].decode())
    def deserialize(self, key, value, flags): return (value.decode(), flags)
c = Client(("127.0.0.1", ${server.port}), serde=Raw())
for body in (b"py-1", b"py-2", b"py-3"):
    assert c.set("pyq", body, noreply=False)
c.set("pyq2", b"other-9", noreply=False)
print(c.get("pyq"), c.get("pyq"))
print(sorted(c.get_many(["pyq", "pyq2"]).items()))
print(c.delete("pyq", noreply=False), c.get("pyq"), c.delete("pyq", noreply=False))
`;
  const r = Bun.spawnSync([PYTHON, "-c", script]);
  expect(r.stderr.toString()).toBe("");
  expect(r.stdout.toString()).toBe(
    "('py-1', 1) ('py-2', 2)\n[('pyq', ('py-3', 3)), ('pyq2', ('other-9', 9))]\nTrue None False\n",
  );
});

test.skipIf(!available("pymemcache", hasPymemcache, "apt-get install python3-pymemcache"))(
  "the README's Python example runs as written, and a blocking get's VALUE matches its key",
  async () => {
    const readme = await Bun.file(join(import.meta.dir, "../../README.md")).text();
    const example = readme.match(/```python\n([\s\S]*?)```/)![1]!.replace("22201", String(server.port));
    const r = Bun.spawnSync([PYTHON, "-c", example]);
    expect(r.stderr.toString()).toBe("");
    expect(r.stdout.toString()).toBe("working on b'resize 1234'\n");
    const c = await server.connect();
    // The example confirmed its job: nothing queued, nothing open.
    expect(await c.call("stats queue jobs\r\n")).toContain("STAT items 0\r\nSTAT bytes 0\r\nSTAT total 1\r\nSTAT fetched 1\r\nSTAT open 0\r\n");
    // Before the echo, pymemcache raised on `VALUE waitq` for `get waitq/t=500` after the message was taken.
    const blocking = `
from pymemcache.client.base import Client
c = Client(("127.0.0.1", ${server.port}))
c.set("waitq", b"late", noreply=False)
print(c.get("waitq/t=500"), c.get("waitq/t=50"), c.get_many(["waitq/peek", "nosuch/open"]))
`;
    const b = Bun.spawnSync([PYTHON, "-c", blocking]);
    expect(b.stderr.toString()).toBe("");
    expect(b.stdout.toString()).toBe("b'late' None {}\n");
    c.close();
  },
);

test.skipIf(!available("pymemcache", hasPymemcache, "apt-get install python3-pymemcache")).each(STORES)(
  "pymemcache with issue 12's options: set q/delay= and q/id=, get q/abort/delay= (%s store)",
  async (store) => {
    const own = await startOn(store);
    const script = `
import time
from pymemcache.client.base import Client
c = Client(("127.0.0.1", ${own.port}))
assert c.set("pyd/delay=300", b"later", noreply=False)
assert c.set("pyd", b"now", noreply=False)
print(c.get("pyd"), c.get("pyd"))
print(c.get("pyd/t=3000"))
for _ in range(2):
    assert c.set("pyi/id=order-1", b"once", noreply=False)
print(c.get("pyi"), c.get("pyi"))
c.set("pyr", b"job", noreply=False)
print(c.get("pyr/open"), c.get("pyr/abort/delay=300"), c.get("pyr"))
started = time.monotonic()
print(c.get("pyr/t=3000"), time.monotonic() - started > 0.1)
`;
    const r = Bun.spawnSync([PYTHON, "-c", script]);
    expect(r.stderr.toString()).toBe("");
    expect(r.stdout.toString()).toBe("b'now' None\nb'later'\nb'once' None\nb'job' None None\nb'job' True\n");
    await own.kill();
  },
);

test("npm memcached", async () => {
  const mc = new Memcached(`127.0.0.1:${server.port}`, { retries: 0, timeout: 2000 });
  const call = <T>(fn: (cb: (err: unknown, v: T) => void) => void) =>
    new Promise<T>((ok, fail) => fn((err, v) => (err ? fail(err) : ok(v))));
  try {
    // The client picks the flags from the type: a string, a number and an object come back typed.
    for (const v of ["hello", 42, { job: 7 }]) expect(await call((cb) => mc.set("nodeq", v, 0, cb))).toBe(true);
    expect(await call((cb) => mc.get("nodeq", cb))).toBe("hello");
    expect(await call((cb) => mc.get("nodeq", cb))).toBe(42);
    await call((cb) => mc.set("nodeq2", "second queue", 0, cb));
    expect(await call((cb) => mc.getMulti(["nodeq", "nodeq2"], cb))).toEqual({ nodeq: { job: 7 }, nodeq2: "second queue" });
    await call((cb) => mc.set("nodeq", "gone soon", 0, cb));
    expect(await call((cb) => mc.del("nodeq", cb))).toBe(true);
    expect(await call((cb) => mc.get("nodeq", cb))).toBeUndefined();
  } finally {
    mc.end();
  }
});

test.skipIf(!available("libmemcached tools", hasLibmemcached, "apt-get install libmemcached-tools"))(
  "libmemcached: memccp, memccat, memcrm",
  () => {
    const dir = tempDir("mcq-memccp-");
    const servers = `--servers=127.0.0.1:${server.port}`;
    const run = (...args: string[]) => {
      const r = Bun.spawnSync(args, { cwd: dir });
      return { code: r.exitCode, out: r.stdout.toString() };
    };
    // memccp stores a file under its own name, with the flags given.
    for (const [body, flag] of [["first", "5"], ["second", "6"]] as const) {
      writeFileSync(join(dir, "cq"), body);
      expect(run("memccp", servers, `--flag=${flag}`, "cq").code).toBe(0);
    }
    writeFileSync(join(dir, "cq2"), "other");
    expect(run("memccp", servers, "cq2").code).toBe(0);
    expect(run("memccat", servers, "--flag", "cq")).toEqual({ code: 0, out: "5\nfirst\n" });
    expect(run("memccat", servers, "cq", "cq2")).toEqual({ code: 0, out: "second\nother\n" });
    writeFileSync(join(dir, "cq"), "third");
    run("memccp", servers, "cq");
    expect(run("memcrm", servers, "cq").code).toBe(0);
    expect(run("memccat", servers, "cq").code).not.toBe(0);
  },
);
