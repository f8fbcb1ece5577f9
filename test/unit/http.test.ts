/** stats.json?shared: every dashboard within SHARE_MS of a snapshot gets that one body. */
import { expect, test } from "bun:test";
import { recent } from "../../src/http";

test("recent(): one body per window, made again once the window has passed", async () => {
  let t = 0;
  let made = 0;
  const body = recent(900, async () => `body ${++made}`, () => t);
  expect(await body()).toBe("body 1");
  t = 899;
  expect(await body()).toBe("body 1");
  t = 900;
  expect(await body()).toBe("body 2");
  t = 1799;
  expect([await body(), made]).toEqual(["body 2", 2]);
});

test("recent(): a body that failed is not served again; the next call makes a new one", async () => {
  let fail = true;
  const body = recent(900, async () => {
    if (fail) throw new Error("store gone");
    return "ok";
  }, () => 0);
  // recent() forgets the body in a handler attached before this one, so it has run by now.
  expect(await body().then(() => "served", (e: Error) => e.message)).toBe("store gone");
  fail = false;
  expect(await body()).toBe("ok");
});
