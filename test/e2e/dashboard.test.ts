/**
 * Issue 13: the live dashboard at / of --http, loaded in Debian's headless Chromium. The page
 * fires "mcq-render" after each refresh; the test awaits that event in the page, never a timer.
 * Under CI Chromium must be there (.ci/run installs it); elsewhere the test skips, saying why.
 */
import { afterAll, expect, test } from "bun:test";
import { join } from "node:path";
import { findChromium, launchChromium, VIEWPORT } from "./browser";
import { metricsUrl, set, startServer, stopAll, tempDir } from "./harness";

afterAll(stopAll);

const chromium = findChromium();
if (chromium === null && process.env.CI) throw new Error("chromium is missing in CI: apt-get install chromium");
if (chromium === null) console.warn("chromium not installed (apt-get install chromium): the dashboard test is skipped");

/** The queue rows as the page shows them: [queue, depth, open, delayed, dead-lettered, waiting gets]. */
const ROWS = `[...document.querySelectorAll("#queues tbody tr")].map((tr) =>
  [tr.dataset.queue, ...["name", "depth", "open", "delayed", "dead-lettered", "waiters"].map((c) => tr.querySelector("td." + c).textContent)])`;

/** Resolves, in the page, with ROWS at the first refresh (this one or a later one) for which `ready` holds. */
const rowsWhen = (ready: string) => `new Promise((resolve) => {
  const rows = () => ${ROWS};
  const check = () => { const r = rows(); if (${ready}) resolve(r); else document.addEventListener("mcq-render", check, { once: true }); };
  check();
})`;

/** The peak of a rate sparkline ("sets" or "gets" column) of one queue's row. */
const peak = (queue: string, column: number) =>
  `Number(document.querySelector('#queues tr[data-queue="${queue}"]').querySelectorAll("td.rate svg")[${column}].dataset.peak)`;

test.skipIf(chromium === null)("issue 13: the dashboard shows each queue's depth, open, delayed, dead-lettered, rates; live", async () => {
  // Two listed queues (--metrics-queues 3 lists the 3 deepest): the rest are summed in one row.
  const s = await startServer(["--http", "127.0.0.1:0", "--metrics-queues", "3"]);
  const url = await metricsUrl(s.stderr);
  const c = await s.connect();
  await c.call(set("alpha", "1").repeat(3) + set("beta", "1").repeat(2) + set("<b>&amp;", "1").repeat(2) +
    set("s1", "1") + set("s2", "1") + "get beta/open\r\n");

  const page = await fetch(`${url}/`);
  const html = await page.text();
  expect(page.headers.get("content-type")).toBe("text/html; charset=utf-8");
  expect(html.startsWith("<!doctype html>")).toBe(true);
  // Self-contained: no script, style sheet or image from anywhere, this server included.
  expect(html).not.toMatch(/<(script|link|img|iframe)\b[^>]*\b(src|href)=/i);
  expect(html).not.toMatch(/https?:\/\/(?!www\.w3\.org\/2000\/svg)/);

  // What the page reads: a snapshot shared by every dashboard for a moment, with the time it was taken.
  const before = Date.now();
  const stats = (await (await fetch(`${url}/stats.json?shared`)).json()) as { time: number; queues: { name: string }[] };
  expect(stats.time).toBeGreaterThanOrEqual(before);
  expect(stats.time).toBeLessThanOrEqual(Date.now());
  expect(stats.queues.map((q) => q.name)).toEqual(["alpha", "<b>&amp;", "beta"]);

  const dir = tempDir("mcq-dashboard-");
  const browser = await launchChromium(chromium!, dir);
  try {
    const tab = await browser.page();
    await tab.goto(`${url}/`);
    // Deepest first, ties by name; a name is text, not markup; beta's open message counts in its depth.
    expect(await tab.evaluate(rowsWhen("r.length > 0"))).toEqual([
      ["alpha", "alpha", "3", "0", "0", "0", "0"],
      ["<b>&amp;", "<b>&amp;", "2", "0", "0", "0", "0"],
      ["beta", "beta", "2", "1", "0", "0", "0"],
      ["(other queues)", "(2 other queues)", "2", "0", "0", "0", "0"],
    ]);
    expect(await tab.evaluate(`document.getElementById("queue-count").textContent`)).toBe("5");
    expect(await tab.evaluate(`document.getElementById("shown").textContent`)).toBe("the 3 deepest of 5 queues; the rest are summed in the last row");

    // Refreshes by itself: new sets and gets show in depth and in the rate sparklines.
    await c.call(set("beta", "2").repeat(4) + "get alpha\r\n");
    const later = await tab.evaluate<string[][]>(rowsWhen(`r.some((q) => q[0] === "beta" && q[2] === "6")`));
    expect(later.map((r) => r.slice(0, 3))).toEqual([
      ["beta", "beta", "6"],
      ["<b>&amp;", "<b>&amp;", "2"],
      ["alpha", "alpha", "2"],
      ["(other queues)", "(2 other queues)", "2"],
    ]);
    expect(await tab.evaluate(peak("beta", 0))).toBeGreaterThan(0);
    expect(await tab.evaluate(peak("alpha", 1))).toBeGreaterThan(0);
    expect(await tab.evaluate(peak("beta", 1))).toBe(0);
    expect(await tab.evaluate(`document.getElementById("status").className`)).toBe("");

    const shot = join(dir, "dashboard.png");
    await tab.screenshot(shot);
    const png = Buffer.from(await Bun.file(shot).arrayBuffer());
    expect(png.subarray(0, 8).toString("hex")).toBe("89504e470d0a1a0a");
    expect([png.readUInt32BE(16), png.readUInt32BE(20)]).toEqual([VIEWPORT.width, VIEWPORT.height]); // IHDR
    console.log(`dashboard screenshot: ${shot}`);

    // The server gone: the page says so at its next refresh and keeps the last numbers.
    expect(await s.kill()).toBe(0);
    const down = `new Promise((resolve) => {
      const status = document.getElementById("status");
      const check = () => status.className === "down" ? resolve(status.textContent) : document.addEventListener("mcq-render", check, { once: true });
      check();
    })`;
    expect(await tab.evaluate(down)).toStartWith("cannot reach the server");
    expect((await tab.evaluate<string[][]>(rowsWhen("true")))[0]!.slice(0, 3)).toEqual(["beta", "beta", "6"]);
    expect(tab.exceptions).toEqual([]);
  } finally {
    await browser.close();
  }
}, 120_000);
