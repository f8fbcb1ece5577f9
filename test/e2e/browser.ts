/**
 * Debian's headless Chromium, driven over the DevTools protocol with Bun's own WebSocket: no npm
 * package, no browser download. Chromium is launched on port 0 for DevTools and says where it
 * listens on stderr; each call waits for its own reply (or an event), never for a fixed time.
 */
import { join } from "node:path";
import type { Subprocess } from "bun";
import { readLine } from "./harness";

/** The Chromium on PATH, or null. */
export function findChromium(): string | null {
  for (const name of ["chromium", "chromium-browser"]) {
    const path = Bun.which(name);
    if (path !== null) return path;
  }
  return null;
}

/** What a call or an event may take at most before the test fails with the method's name. */
const CALL_MS = 20_000;
/** Every page's viewport, so that screenshots have one size (a window's size includes its frame). */
export const VIEWPORT = { width: 1280, height: 800 };

export interface Page {
  /** Loads the URL and resolves once its load event has fired. */
  goto(url: string): Promise<void>;
  /** Evaluates an expression in the page, awaits it if it is a promise, and returns its value. */
  evaluate<T>(expression: string): Promise<T>;
  /** Writes a PNG of the viewport to `path`. */
  screenshot(path: string): Promise<void>;
  /** Every uncaught exception of the page's scripts so far. */
  exceptions: string[];
}

export interface Browser {
  page(): Promise<Page>;
  close(): Promise<void>;
}

interface Reply {
  id?: number;
  method?: string;
  sessionId?: string;
  params?: unknown;
  result?: unknown;
  error?: { message: string };
}

/** Starts Chromium with a fresh profile under `dir` and connects to it. */
export async function launchChromium(chromium: string, dir: string): Promise<Browser> {
  const proc: Subprocess<"ignore", "ignore", "pipe"> = Bun.spawn([
    chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--hide-scrollbars",
    `--user-data-dir=${join(dir, "profile")}`, "--remote-debugging-port=0", "about:blank",
  ], { stdin: "ignore", stdout: "ignore", stderr: "pipe" });
  try {
    return await connect(proc);
  } catch (e) {
    // Nothing else would end it: a browser left behind keeps running after the tests.
    proc.kill("SIGKILL");
    await proc.exited;
    throw e;
  }
}

async function connect(proc: Subprocess<"ignore", "ignore", "pipe">): Promise<Browser> {
  const line = await within("DevTools' listening line", readLine(proc.stderr, (l) => l.startsWith("DevTools listening on ")));
  if (line === null) throw new Error(`chromium exited (${await proc.exited}) before it listened for DevTools`);
  // The rest of stderr is Chromium's own chatter; it must be read, or a full pipe would block it.
  const rest = proc.stderr.getReader();
  void (async () => {
    while (!(await rest.read()).done);
  })();
  const ws = new WebSocket(line.slice("DevTools listening on ".length).trim());
  await new Promise<void>((ok, fail) => {
    ws.onopen = () => ok();
    ws.onerror = () => fail(new Error("cannot connect to chromium's DevTools socket"));
  });

  let nextId = 1;
  const calls = new Map<number, { ok: (v: unknown) => void; fail: (e: Error) => void }>();
  const listeners = new Set<(m: Reply) => void>();
  ws.onmessage = (event) => {
    const m = JSON.parse(String(event.data)) as Reply;
    if (m.id !== undefined) {
      const call = calls.get(m.id);
      calls.delete(m.id);
      if (m.error) call?.fail(new Error(m.error.message));
      else call?.ok(m.result);
    } else for (const listen of listeners) listen(m);
  };
  ws.onclose = () => {
    for (const call of calls.values()) call.fail(new Error("chromium closed the DevTools socket"));
    calls.clear();
  };

  const send = <T>(method: string, params: object = {}, sessionId?: string): Promise<T> =>
    within(method, new Promise<T>((ok, fail) => {
      const id = nextId++;
      calls.set(id, { ok: ok as (v: unknown) => void, fail });
      ws.send(JSON.stringify({ id, method, params, sessionId }));
    }));
  const event = (method: string, sessionId: string): Promise<void> =>
    within(method, new Promise<void>((ok) => {
      const listen = (m: Reply) => {
        if (m.method === method && m.sessionId === sessionId) (listeners.delete(listen), ok());
      };
      listeners.add(listen);
    }));

  return {
    async page() {
      const { targetId } = await send<{ targetId: string }>("Target.createTarget", { url: "about:blank" });
      const { sessionId } = await send<{ sessionId: string }>("Target.attachToTarget", { targetId, flatten: true });
      const exceptions: string[] = [];
      listeners.add((m) => {
        if (m.method !== "Runtime.exceptionThrown" || m.sessionId !== sessionId) return;
        const { exceptionDetails: d } = m.params as { exceptionDetails: { text: string; exception?: { description?: string } } };
        exceptions.push(d.exception?.description ?? d.text);
      });
      await send("Runtime.enable", {}, sessionId);
      await send("Page.enable", {}, sessionId);
      await send("Emulation.setDeviceMetricsOverride", { ...VIEWPORT, deviceScaleFactor: 1, mobile: false }, sessionId);
      return {
        exceptions,
        async goto(url) {
          const loaded = event("Page.loadEventFired", sessionId);
          const { errorText } = await send<{ errorText?: string }>("Page.navigate", { url }, sessionId);
          if (errorText) throw new Error(`cannot load ${url}: ${errorText}`);
          await loaded;
        },
        async evaluate<T>(expression: string) {
          const r = await send<{ result: { value: T }; exceptionDetails?: { text: string; exception?: { description?: string } } }>(
            "Runtime.evaluate", { expression, awaitPromise: true, returnByValue: true }, sessionId);
          if (r.exceptionDetails) throw new Error(`in the page: ${r.exceptionDetails.exception?.description ?? r.exceptionDetails.text}`);
          return r.result.value;
        },
        async screenshot(path) {
          const { data } = await send<{ data: string }>("Page.captureScreenshot", { format: "png" }, sessionId);
          await Bun.write(path, Buffer.from(data, "base64"));
        },
      };
    },
    async close() {
      await send("Browser.close").catch(() => proc.kill("SIGKILL"));
      ws.close();
      await proc.exited;
    },
  };
}

/** The promise, or a clear failure naming what was awaited once CALL_MS have passed. */
function within<T>(what: string, promise: Promise<T>): Promise<T> {
  let timer: Timer | undefined;
  const late = new Promise<never>((_, fail) => {
    timer = setTimeout(() => fail(new Error(`chromium: no answer to ${what} within ${CALL_MS} ms`)), CALL_MS);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}
