/**
 * Long listings (metrics, stats) built in slices: no event-loop turn spends more than a few ms
 * on them, so the clients' requests keep being served in between (about 5 ms at most).
 */

/** Work done in one turn before the loop is given back. */
const SLICE_MS = 2;
/** Steps between two looks at the clock: reading it costs more than a step of a listing. */
const STEPS_PER_LOOK = 16;

export interface TurnClock {
  /** Whether this turn has had its share; call once per step. */
  over(): boolean;
  /** Gives the loop back (the sockets' I/O runs) and starts a new slice. */
  next(): Promise<void>;
}

export function turnClock(sliceMs = SLICE_MS): TurnClock {
  let start = performance.now();
  let steps = 0;
  return {
    over: () => ++steps % STEPS_PER_LOOK === 0 && performance.now() - start >= sliceMs,
    async next() {
      // A timer, not setImmediate: the server's own turns are immediates, and a listing resumed
      // by a timer lets them all go first. Measured with 2 ms slices of busy work and a client
      // echoing one byte: 0.27 ms per round trip on average, against 2.4 ms with setImmediate
      // (whose next slice ran before the turn of the request that had just arrived).
      await new Promise<void>((resolve) => setTimeout(resolve, 0));
      start = performance.now();
    },
  };
}

/**
 * A response body made of text built in slices: `build` adds lines and awaits `slice()`, which
 * closes a chunk when the turn is over. Chunks are encoded one per pull, so encoding a long
 * text does not take one long turn either.
 */
export async function slicedText(
  build: (line: (text: string) => void, slice: () => Promise<void>) => Promise<void>,
  clock = turnClock(),
): Promise<ReadableStream<Uint8Array>> {
  const chunks: string[] = [];
  let lines: string[] = [];
  const cut = () => {
    if (lines.length > 0) chunks.push(lines.join(""));
    lines = [];
  };
  await build(
    (text) => void lines.push(text),
    async () => {
      if (!clock.over()) return;
      cut();
      await clock.next();
    },
  );
  cut();
  const encoder = new TextEncoder();
  let i = 0;
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      // A stream may call pull again within the same turn; one chunk per turn keeps it short.
      if (i > 0) await clock.next();
      if (i < chunks.length) controller.enqueue(encoder.encode(chunks[i++]!));
      else controller.close();
    },
  });
}
