/**
 * The attribution of scripts/bench/profile.ts, apart so that a test can feed it a profile: each
 * sample of a `.cpuprofile` goes to a part of the server by the file of the nearest frame that
 * has one. A native leaf (a Buffer method, a SQLite step, socket.write) thus counts for the code
 * that called it, except socket.write, which is a part of its own (the send syscall is in it).
 */
export interface CpuProfile {
  nodes: { id: number; callFrame: { functionName: string; url: string; lineNumber: number }; children?: number[] }[];
  /** Epoch microseconds, as Bun writes them. */
  startTime: number;
  samples: number[];
  timeDeltas: number[];
}

export const PARTS = ["parse (src/protocol)", "command (commands, get, session)", "store (src/store, bun:sqlite)",
  "batch/turn/connection", "socket write", "other JS"] as const;
export type Part = (typeof PARTS)[number];

/** The part of a frame of ours, by its file (and, for the one-file minimal server, its function). */
export function partOf(file: string, fn: string): Part | null {
  if (file.startsWith("src/protocol/")) return "parse (src/protocol)";
  if (/^src\/(commands|get|session)\.ts$/.test(file)) return "command (commands, get, session)";
  if (file.startsWith("src/store/") || file === "bun:sqlite") return "store (src/store, bun:sqlite)";
  if (/^src\/(batch|turn|conn|server)\.ts$/.test(file)) return "batch/turn/connection";
  if (file === "scripts/bench/minimal.ts") {
    if (fn === "run") return "parse (src/protocol)"; // minimal parses and executes in one loop
    if (fn === "push" || fn === "take") return "store (src/store, bun:sqlite)";
    return "batch/turn/connection";
  }
  if (file.startsWith("src/") || file.startsWith("scripts/")) return "other JS";
  return null; // Bun's own JS or a native frame: it counts for its caller
}

export interface Split {
  samples: number;
  /**
   * The profiler's real period under this load: the 10th percentile of the gaps between samples
   * (the interval plus the sampler's own cost, about 200 us for 100 us asked on the loaded
   * machine). Longer gaps are time the thread spent outside JavaScript, where nothing is sampled.
   */
  intervalUs: number;
  parts: { part: Part; samples: number }[];
  top: { frame: string; part: Part; samples: number }[];
}

/**
 * Attributes the samples taken between `fromUs` and `toUs` (epoch microseconds). `file` maps a
 * frame's url to a path relative to the repository (urls outside it are returned unchanged).
 */
export function attribute(profile: CpuProfile, file: (url: string) => string, fromUs: number, toUs: number): Split {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const partOfNode = new Map<number, Part>();
  const classify = (leaf: number): Part => {
    const known = partOfNode.get(leaf);
    if (known !== undefined) return known;
    let part: Part = "other JS";
    const leafFrame = byId.get(leaf)!.callFrame;
    for (let id: number | undefined = leaf; id !== undefined; id = parent.get(id)) {
      const frame = byId.get(id)!.callFrame;
      const found = partOf(file(frame.url), frame.functionName);
      if (found === null) continue;
      const nativeWrite = id !== leaf && leafFrame.url === "" && leafFrame.functionName === "write" && parent.get(leaf) === id;
      part = nativeWrite && found === "batch/turn/connection" ? "socket write" : found;
      break;
    }
    partOfNode.set(leaf, part);
    return part;
  };
  const counts = new Map<Part, number>(PARTS.map((p) => [p, 0]));
  const frames = new Map<number, number>();
  const gaps: number[] = [];
  let at = profile.startTime;
  let last = -1;
  let samples = 0;
  for (let i = 0; i < profile.samples.length; i++) {
    at += profile.timeDeltas[i]!;
    if (at < fromUs || at > toUs) continue;
    if (last >= 0) gaps.push(at - last);
    last = at;
    const id = profile.samples[i]!;
    samples++;
    counts.set(classify(id), counts.get(classify(id))! + 1);
    frames.set(id, (frames.get(id) ?? 0) + 1);
  }
  gaps.sort((a, b) => a - b);
  const top = [...frames].sort((a, b) => b[1] - a[1]).map(([id, n]) => {
    const f = byId.get(id)!.callFrame;
    const where = f.url === "" ? `(native, called from ${byId.get(parent.get(id)!)?.callFrame.functionName || "?"})` : `${file(f.url)}:${f.lineNumber + 1}`;
    return { frame: `${f.functionName || "(anonymous)"} ${where}`, part: classify(id), samples: n };
  });
  return { samples, intervalUs: gaps.length ? gaps[Math.floor(gaps.length / 10)]! : 0, parts: PARTS.map((part) => ({ part, samples: counts.get(part)! })), top };
}
