/**
 * --http <addr:port>: metrics, health and a live dashboard over HTTP, with Bun.serve (off by default).
 *   GET /            the dashboard: one page (dashboard.html) that polls /stats.json each second
 *   GET /metrics     Prometheus text exposition
 *   GET /stats.json  the same numbers as JSON; with ?shared, a body at most SHARE_MS old
 *   GET /healthz     200 when a message could be stored now, 503 otherwise
 * The dashboard's bounds: /stats.json lists the --metrics-queues deepest queues (default 1000)
 * and sums the rest in one row, so a refresh sends at most that many rows (about 135 KB for
 * 1000), whatever the number of queues. Building one is a pass over every queue's counters in
 * memory, in slices (67 ms of CPU with 100,000 queues), so the page asks for ?shared: every open
 * dashboard together costs at most one snapshot per SHARE_MS.
 */
import type { Context } from "./context";
// With type "text" Bun imports the file's contents, and `bun build --compile` embeds them in the
// binary; bun-types types every .html import as an HTMLBundle (Bun's full-stack bundling), hence the cast.
import dashboardPage from "./dashboard.html" with { type: "text" };
import { json, prometheus, snapshot } from "./metrics";
import { turnClock } from "./slices";

const DASHBOARD = dashboardPage as unknown as string;
/** How long a ?shared body serves every dashboard: under the page's 1 s period, so each gets a fresh one. */
export const SHARE_MS = 900;

/**
 * One body for every call within `ms` of the call that made it. A body that failed is not kept.
 * `now` is injected for tests.
 */
export function recent(ms: number, make: () => Promise<string>, now = () => performance.now()): () => Promise<string> {
  let last: { at: number; body: Promise<string> } | null = null;
  return () => {
    const t = now();
    if (last === null || t - last.at >= ms) {
      const made = { at: t, body: make() };
      made.body.catch(() => {
        if (last === made) last = null;
      });
      last = made;
    }
    return last.body;
  };
}

export interface HttpServer {
  url: string;
  stop(): void;
}

/** "host:port" or ":port" → parts; null if it is not one. */
export function parseHttpAddress(value: string): { hostname: string; port: number } | null {
  const m = /^(.*):(\d{1,5})$/.exec(value);
  if (m === null || Number(m[2]) > 65535) return null;
  return { hostname: m[1]!.replace(/^\[(.*)\]$/, "$1") || "127.0.0.1", port: Number(m[2]) };
}

export function startHttp(ctx: Context, address: { hostname: string; port: number }): HttpServer {
  const shared = recent(SHARE_MS, async () => {
    const clock = turnClock();
    return new Response(await json(await snapshot(ctx, clock), clock)).text();
  });
  const server = Bun.serve({
    hostname: address.hostname,
    port: address.port,
    async fetch(request) {
      const url = new URL(request.url);
      const path = url.pathname;
      if (request.method !== "GET") return new Response("method not allowed\n", { status: 405 });
      if (path === "/") return new Response(DASHBOARD, { headers: { "content-type": "text/html; charset=utf-8" } });
      // Both are built across event-loop turns, so a scrape never holds the clients up for long.
      if (path === "/metrics") {
        const clock = turnClock();
        const body = await prometheus(await snapshot(ctx, clock), clock);
        return new Response(body, { headers: { "content-type": "text/plain; version=0.0.4" } });
      }
      if (path === "/stats.json" && url.searchParams.has("shared")) {
        return new Response(await shared(), { headers: { "content-type": "application/json" } });
      }
      if (path === "/stats.json") {
        const clock = turnClock();
        const body = await json(await snapshot(ctx, clock), clock);
        return new Response(body, { headers: { "content-type": "application/json" } });
      }
      if (path === "/healthz") {
        const ok = ctx.store.writable(ctx.now());
        return new Response(ok ? "ok\n" : "store not writable\n", { status: ok ? 200 : 503 });
      }
      return new Response("not found: try /, /metrics, /stats.json or /healthz\n", { status: 404 });
    },
  });
  return { url: `http://${address.hostname}:${server.port}`, stop: () => void server.stop(true) };
}
