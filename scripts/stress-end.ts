/**
 * How a stress phase ends: on a full disk, sets must be taken again once it is drained; then
 * SIGTERM with requests waiting, each of which must be answered; then a fault-free server on
 * the same data directory gives back every message the model says is still stored.
 */
import { startServer } from "../test/e2e/harness";
import { statsLine } from "./stress-model";
import { checkpoint, serverView, type Run } from "./stress-run";
import type { Reply, Req } from "./stress-wire";
import { ALL_QUEUES, getOf, keySpec, QUEUES, send, setOf, statsOf, WAITQ } from "./stress-workload";

const items = (run: Run, queue: string) => Number(/items (\d+)/.exec(run.model.expected(queue))![1]);

/** After the disk filled and was drained, sets are taken again, without a restart. */
export async function recovers(run: Run): Promise<void> {
  const { ctx } = run;
  const c = run.control!;
  for (const q of [...QUEUES, WAITQ]) {
    send(c, Array.from({ length: items(run, q) + 1 }, () => getOf(ctx, [keySpec(q, "plain")])));
    await ctx.settle(c);
  }
  const deadline = Date.now() + 15_000;
  for (;;) {
    const item = setOf(ctx, c, QUEUES[0]!, 32_768);
    send(c, [item]);
    await ctx.settle(c);
    if (item[0].reply?.kind === "line" && item[0].reply.line === "STORED") break;
    if (Date.now() > deadline) return run.fail(c, item[0], "the disk was drained, yet sets were still refused 15 s later");
    await Bun.sleep(100);
  }
  await checkpoint(run);
}

/**
 * SIGTERM while every connection has a get parked on the empty WAITQ and requests behind it
 * (the parked gets prove the server read them). Each is answered, then the connection closes,
 * and the exit code is 0.
 */
async function stopLoaded(run: Run): Promise<void> {
  const { ctx, rnd } = run;
  ctx.step++;
  send(run.control!, Array.from({ length: items(run, WAITQ) + 1 }, () => getOf(ctx, [keySpec(WAITQ, "plain")])));
  await ctx.settle(run.control!);
  const parked: Req[] = [];
  for (const c of ctx.conns) {
    const burst = [getOf(ctx, [keySpec(WAITQ, "plain", 10_000)])];
    parked.push(burst[0]![0]);
    for (let n = 1 + Math.floor(rnd() * 4); n > 0; n--) {
      const queue = QUEUES[Math.floor(rnd() * QUEUES.length)]!;
      burst.push(rnd() < 0.5 ? setOf(ctx, c, queue, ctx.bodySize()) : getOf(ctx, [keySpec(queue, rnd() < 0.5 ? "plain" : "open")]));
    }
    send(c, burst);
  }
  // Injected failures may end a parked get early (SERVER_ERROR): those are not waiting.
  const waiting = () => `waiters ${parked.filter((r) => r.reply === null).length};`;
  // The server answers what it has begun to read, so every burst must have left this process:
  // a request still in the client's buffer when the signal comes was never sent.
  const sent = () => ctx.conns.every((c) => c.client.socket.writableLength === 0);
  for (let i = 0; !(sent() && (await serverView(run))[0].includes(waiting())); i++) {
    if (i === 500) return run.fail(null, null, `the stop's blocking gets never all waited (want ${waiting()})`);
    await Bun.sleep(10);
  }
  for (const c of run.live) c.leaving = "quit"; // closing with a request unanswered is a violation
  const code = await run.server!.kill("SIGTERM");
  run.server = null;
  if (code !== 0) return run.fail(null, null, `SIGTERM: exit code ${code}`);
  for (const c of run.live) await c.until(() => c.closed, 10_000, `connection ${c.id} to close after SIGTERM`);
  for (const c of ctx.conns) run.model.gone(c.id);
}

/**
 * Stops the server (under load, unless a violation already ended the phase), then a fault-free
 * server on the same directory must hold exactly what the model says is left, and give it back.
 * After a violation this still runs: it says which acknowledged messages are gone.
 */
export async function drain(run: Run): Promise<void> {
  if (run.report.failure === null) await stopLoaded(run);
  else if (run.server !== null) {
    for (const c of run.live) c.leaving = "destroy";
    await run.server.kill("SIGTERM");
    run.server = null;
  }
  if (run.server !== null) return; // it still holds the data directory
  const failed = run.report.failure !== null;
  run.server = await startServer([], run.home, run.command);
  const problems = await drainAll(run);
  if (problems.length === 0) return;
  if (failed) run.report.failure += `\n  then the drain found: ${problems.join("\n    ")}`;
  else run.fail(null, null, `the drain found: ${problems.join("\n    ")}`);
}

async function drainAll(run: Run): Promise<string[]> {
  const { ctx, model } = run;
  const c = await run.connect(false);
  const problems: string[] = [];
  for (const q of ALL_QUEUES) {
    const before = model.expected(q).replace(/open \d+/, "open 0");
    const gets = [statsOf(ctx, `stats queue ${q}`), ...Array.from({ length: items(run, q) + 1 }, () => getOf(ctx, [keySpec(q, "plain")]))];
    send(c, gets);
    await ctx.settle(c);
    const got = statsLine((gets[0]![0].reply as Extract<Reply, { kind: "stats" }>).lines);
    if (got !== before) problems.push(`after the restart, ${q}: stats ${got}; model ${before}`);
    for (const [r] of gets.slice(1)) {
      const values = (r.reply as Extract<Reply, { kind: "get" }>).values;
      for (const v of values) {
        try {
          model.drained(v, q);
        } catch (e) {
          problems.push((e as Error).message);
        }
      }
      run.drained += values.length;
    }
  }
  const lost = model.lost();
  if (lost.length > 0) problems.push(`${lost.length} acknowledged messages lost: ${lost.slice(0, 5).join("; ")}`);
  c.leaving = "quit";
  const code = await run.server!.kill("SIGTERM");
  run.server = null;
  if (code !== 0) problems.push(`the drained server's SIGTERM: exit code ${code}`);
  return problems;
}

/** Whatever is left: connections closed, the server killed. */
export async function stop(run: Run): Promise<void> {
  for (const c of run.live) {
    c.leaving ??= "destroy";
    c.client.close();
  }
  if (run.server !== null) await run.server.kill("SIGKILL");
}
