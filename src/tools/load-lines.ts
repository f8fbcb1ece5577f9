/**
 * What every `mcq load` checks of a dump, whatever store it goes into (load.ts: SQLite,
 * load-postgres.ts: Postgres): the lines in their order (a header first, or none at all for a
 * file of mcq 1.0.0; each queue line once; nothing after the end line), and that the end line
 * counts what came before it. The store's part is a Sink, called for each line that passed.
 */
import { lines, parseLine, type Header, type Line, type MessageLine, type QueueLine, type TokenLine } from "./format";
import { ToolError } from "./datadir";
import { collectEvery, progress } from "./output";

export interface Sink {
  header(line: Header): void;
  queue(line: QueueLine): void;
  /** The `n`th line of the file. */
  message(line: MessageLine, n: number): void;
  token(line: TokenLine): void;
  /** Work the sink holds back (a store that writes in chunks): awaited before the next line is read. */
  drain?(): Promise<void> | null;
}

/** The lines' order and counts, checked as they come; calls `into` for each. */
export function dumpReader(into: Sink, notes: string[]) {
  const counted = new Set<string>();
  const state = { header: null as Header | null, legacy: false, ended: false, queues: 0, count: 0 };

  /** One line of the dump, the `n`th of the file. */
  function take(line: Line, n: number): void {
    if (state.ended) throw new ToolError(`mcq load: line ${n}: a line after the end line`);
    if (state.header === null && !state.legacy) {
      if (line.type === "dump") {
        into.header(line);
        state.header = line;
        return;
      }
      state.legacy = true;
      notes.push("this dump has no id (written by mcq 1.0.0): loading it twice would add its messages twice");
    }
    if (line.type === "dump") throw new ToolError(`mcq load: line ${n}: a second header`);
    if (line.type === "end") {
      if (line.queues !== state.queues || line.messages !== state.count) {
        throw new ToolError(`mcq load: line ${n}: the end line counts ${line.queues} queues and ${line.messages} messages; ` +
          `the dump holds ${state.queues} and ${state.count}`);
      }
      state.ended = true;
    } else if (line.type === "queue") {
      if (counted.has(line.name)) throw new ToolError(`mcq load: line ${n}: queue ${line.name} a second time`);
      counted.add(line.name);
      into.queue(line);
      state.queues++;
    } else if (line.type === "token") into.token(line);
    else {
      into.message(line, n);
      state.count++;
    }
  }

  /** After the last line (`n` lines in all): a dump that is whole, or nothing is loaded. */
  function finish(n: number): void {
    if (n === 0) throw new ToolError("mcq load: the input is empty: not a dump");
    if (state.header !== null && !state.ended) {
      throw new ToolError(`mcq load: the dump ends at line ${n} without its end line (cut short?); nothing loaded`);
    }
  }

  return { state, take, finish };
}

/**
 * Reads `input` to its end into `into`, one line at a time (showing progress on a terminal);
 * returns the reader's state. The caller's transaction makes it all or nothing.
 */
export async function readDump(input: AsyncIterable<Uint8Array>, into: Sink, notes: string[]) {
  const run = dumpReader(into, notes);
  const shown = progress("loaded");
  try {
    let n = 0;
    for await (const text of lines(input)) {
      collectEvery(++n);
      if (text.trim() === "") continue;
      const before = run.state.count;
      run.take(parseLine(text, n), n);
      if (run.state.count !== before) shown.count(run.state.count);
      const pending = into.drain?.() ?? null;
      if (pending !== null) await pending;
    }
    run.finish(n);
    return run.state;
  } finally {
    shown.done();
  }
}
