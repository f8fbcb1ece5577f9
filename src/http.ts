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
 * With -Y, /metrics and /stats.json need HTTP basic auth by a user of the authfile who may read
 * every queue (they name them all); /healthz stays open, for load balancers. With -Z it is HTTPS,
 * and refresh_certs and SIGHUP move it to the new certificate as they do the memcache listeners
 * (listeners.ts): a new Bun.serve on the same port (server.reload() swaps handlers, not the
 * certificate), then the old one stopped with stop(false), which lets requests in flight finish.
 */
import type { Server } from "bun";
import type { TlsSettings } from "./config";
import type { Context } from "./context";
// With type "text" Bun imports the file's contents, and `bun build --compile` embeds them in the
// binary; bun-types types every .html import as an HTMLBundle (Bun's full-stack bundling), hence the cast.
import dashboardPage from "./dashboard.html" with { type: "text" };
import { loadTls, type LoadedTls } from "./tls";
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
  /** HTTPS only: serves new connections with this certificate; open ones finish with the old. */
  moveTo(tls: LoadedTls): void;
  stop(): void;
}

/** "host:port" or ":port" → parts; null if it is not one. */
export function parseHttpAddress(value: string): { hostname: string; port: number } | null {
  const m = /^(.*):(\d{1,5})$/.exec(value);
  if (m === null || Number(m[2]) > 65535) return null;
  return { hostname: m[1]!.replace(/^\[(.*)\]$/, "$1") || "127.0.0.1", port: Number(m[2]) };
}

export function startHttp(ctx: Context, address: { hostname: string; port: number }, tls: TlsSettings | null = null): HttpServer {
  const fetch = handler(ctx);
  const { hostname } = address;
  if (tls === null) {
    const server = Bun.serve({ hostname, port: address.port, fetch });
    return { url: `http://${hostname}:${server.port}`, moveTo: () => {}, stop: () => void server.stop(true) };
  }
  // Both servers hold the port while the certificate moves, hence SO_REUSEPORT; bound once
  // without it first, so that a port someone else has fails as usual.
  const probe = Bun.serve({ hostname, port: address.port, fetch });
  const port = probe.port!;
  void probe.stop(true);
  let server = Bun.serve({ hostname, port, fetch, tls: loadTls(tls), reusePort: true });
  return {
    url: `https://${hostname}:${port}`,
    moveTo(next) {
      const old = server;
      server = Bun.serve({ hostname, port, fetch, tls: next, reusePort: true });
      void old.stop(false);
    },
    stop: () => void server.stop(true),
  };
}

/** The routes. */
function handler(ctx: Context): (request: Request, server: Server<undefined>) => Promise<Response> {
  const shared = recent(SHARE_MS, async () => {
    const clock = turnClock();
    return new Response(await json(await snapshot(ctx, clock), clock)).text();
  });
  return async (request, server) => {
    const url = new URL(request.url);
    const path = url.pathname;
    if (request.method !== "GET") return new Response("method not allowed\n", { status: 405 });
    // With -Y the dashboard asks too: the browser then sends the same login with its polls.
    if (path !== "/healthz" && ctx.auth !== undefined && !(await authorized(ctx, request.headers.get("authorization"), server.requestIP(request)?.address))) {
      return new Response("authentication required\n", { status: 401, headers: { "www-authenticate": 'Basic realm="mcq"' } });
    }
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
  };
}

/** `Authorization: Basic base64(user:password)`, checked against the authfile. */
async function authorized(ctx: Context, header: string | null, peer = "unknown"): Promise<boolean> {
  const m = /^Basic ([A-Za-z0-9+/=]+)$/i.exec(header ?? "");
  if (m === null) return false;
  const pair = Buffer.from(m[1]!, "base64").toString("utf8");
  const colon = pair.indexOf(":");
  if (colon <= 0) return false;
  const ok = await ctx.auth!.verify(pair.slice(0, colon), pair.slice(colon + 1));
  if (!ok) ctx.log.warn(`HTTP authentication failure from ${peer} for user ${pair.slice(0, colon)}`);
  return ok;
}
