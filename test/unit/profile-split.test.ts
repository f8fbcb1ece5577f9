/** scripts/bench/profile-split.ts: which part each sample of a .cpuprofile counts for. */
import { expect, test } from "bun:test";
import { attribute, type CpuProfile } from "../../scripts/bench/profile-split";

const frame = (id: number, functionName: string, url: string, children: number[] = []) =>
  ({ id, callFrame: { functionName, url, lineNumber: 0 }, children });

test("a sample counts for its nearest frame of ours; socket.write under conn.ts is its own part", () => {
  const profile: CpuProfile = {
    nodes: [
      frame(1, "(root)", "", [2, 6]),
      frame(2, "turn", "/repo/src/turn.ts", [3, 5]),
      frame(3, "flushHeld", "/repo/src/conn.ts", [4, 8]),
      frame(4, "write", ""), // socket.write: native, called from conn.ts
      frame(5, "commit", "/repo/src/store/sqlite.ts", [7]),
      frame(6, "data", "/repo/src/protocol/parse.ts"),
      frame(7, "run", ""), // a SQLite step: counts for the store
      frame(8, "subarray", ""), // a Buffer native: counts for its caller
    ],
    startTime: 1000,
    // One sample before the window (at 1100), then one every 100 us.
    samples: [4, 4, 4, 7, 6, 8, 3, 1],
    timeDeltas: [100, 100, 100, 100, 100, 100, 100, 100],
  };
  const split = attribute(profile, (u) => u.replace("/repo/", ""), 1150, 10_000);
  expect(split.samples).toBe(7);
  expect(split.intervalUs).toBe(100);
  expect(Object.fromEntries(split.parts.map((p) => [p.part, p.samples]))).toEqual({
    "parse (src/protocol)": 1,
    "command (commands, get, session)": 0,
    "store (src/store, bun:sqlite)": 1,
    "batch/turn/connection": 2,
    "socket write": 2,
    "other JS": 1, // the root: no frame of ours
  });
  expect(split.top[0]).toEqual({ frame: "write (native, called from flushHeld)", part: "socket write", samples: 2 });
});
