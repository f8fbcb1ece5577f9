/**
 * The stress model's account of blocking waits, judged by what the server counts, never by a
 * clock. A reply's latency says nothing on a loaded machine: at load 11 the server's turns took
 * 150–450 ms, and replies that never waited came 2 s after they were sent, longer than their
 * t=1500 (seeds 1058656607 and 101, fulldisk phase). What the reply says is exact instead.
 *
 * A get parks on a /t= key only while its reply holds no VALUE (src/get.ts), and a parked key
 * leaves with a message (a VALUE for that key) or when its wait runs out, which `stats`
 * counts as `get_timeouts`. So each reply ending in END fixes how many of its waits ran out:
 * one per /t= key that wants a message, yielded nothing, and has no VALUE before it. A get
 * that waited after a VALUE, or waited again, shows as a count above the model's; one that
 * never waited where it had to, below. Replies the model cannot read (SERVER_ERROR, or lost
 * with a disconnect) allow any number up to their /t= keys: the bound stays exact elsewhere.
 */
import type { KeySpec, Req, Value } from "./stress-wire";

/** A key that parks the get on an empty queue: it has a wait and wants a message. */
const waits = (k: KeySpec) => k.t > 0 && k.mode !== "close" && k.mode !== "abort";

export function createWaits() {
  /** The least and the most `get_timeouts` may be, given the replies read so far. */
  let lo = 0;
  let hi = 0;
  /** Requests given up with their connection: a reply to them read later changes nothing. */
  const abandoned = new WeakSet<Req>();
  /** Replies since the last check that held a VALUE yet came later than a later key's wait: hints only. */
  let slow: string[] = [];
  return {
    /** A get answered END: `got[i]` is key i's VALUE or null. */
    answered(req: Req, got: (Value | null)[]): void {
      if (abandoned.has(req)) return;
      const keys = req.keys!;
      let valueBefore = false;
      keys.forEach((k, i) => {
        if (waits(k) && got[i] === null && !valueBefore) lo++, hi++;
        if (got[i] !== null) valueBefore = true;
      });
      const first = got.findIndex((v) => v !== null);
      const late = keys.findIndex((k, i) => i > first && waits(k) && got[i] === null && req.receivedAt - req.startAt >= k.t);
      if (first >= 0 && late >= 0 && !req.paused && slow.length < 5) {
        slow.push(`${JSON.stringify(req.text)} (step ${req.step}) held a VALUE and was read ${req.receivedAt - req.startAt} ms after it could start`);
      }
    },
    /** A get whose keys' outcome is unknown (a SERVER_ERROR reply): any of its waits may have run out. */
    unknown(req: Req): void {
      if (!abandoned.has(req)) hi += req.keys!.filter(waits).length;
    },
    /** Requests whose replies will not be read (their connection is gone). */
    abandon(reqs: Req[]): void {
      for (const r of reqs) {
        if (r.expect !== "get" || abandoned.has(r)) continue;
        abandoned.add(r);
        hi += r.keys!.filter(waits).length;
      }
    },
    /** Null if the server's `get_timeouts` fits the replies; else what is wrong. */
    check(timeouts: number): string | null {
      const hints = slow;
      slow = [];
      if (timeouts >= lo && timeouts <= hi) return null;
      const want = lo === hi ? `${lo}` : `${lo} to ${hi}`;
      const what = timeouts > hi ? "a get waited where it must not (after a VALUE), or twice on one key" : "a get did not wait where its reply says it did";
      const hint = hints.length === 0 ? "" : `; replies that were slow (a clock's hint, not a verdict): ${hints.join("; ")}`;
      return `stats get_timeouts ${timeouts}, but the replies allow ${want}: ${what}${hint}`;
    },
  };
}

export type Waits = ReturnType<typeof createWaits>;
