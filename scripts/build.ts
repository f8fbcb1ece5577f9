/**
 * Compiles mcq into one self-contained executable with `bun build --compile`.
 *   bun run build          dist/mcq for this machine
 *   bun run build --all    also dist/mcq-<target> for every platform we ship, each with a .sha256
 * The version is embedded from package.json (src/main.ts imports it).
 */
import { mkdirSync } from "node:fs";
import { join, resolve } from "node:path";

const ROOT = resolve(import.meta.dir, "..");
const DIST = join(ROOT, "dist");
const TARGETS = [
  "linux-x64",
  "linux-arm64",
  "linux-x64-musl",
  "linux-arm64-musl",
  "darwin-x64",
  "darwin-arm64",
  "windows-x64",
];

async function compile(outfile: string, target?: string): Promise<void> {
  const args = [process.execPath, "build", "--compile", "--minify", "--sourcemap", join(ROOT, "src/main.ts"), "--outfile", outfile];
  if (target !== undefined) args.push("--target", `bun-${target}`);
  const proc = Bun.spawn(args, { cwd: ROOT, stdout: "inherit", stderr: "inherit" });
  if ((await proc.exited) !== 0) throw new Error(`bun build failed for ${target ?? "this machine"}`);
  const file = target === "windows-x64" ? `${outfile}.exe` : outfile;
  const hasher = new Bun.CryptoHasher("sha256");
  hasher.update(await Bun.file(file).arrayBuffer());
  const name = file.slice(DIST.length + 1);
  await Bun.write(`${file}.sha256`, `${hasher.digest("hex")}  ${name}\n`);
  console.log(`built ${name} (${(Bun.file(file).size / 1e6).toFixed(1)} MB)`);
}

mkdirSync(DIST, { recursive: true });
await compile(join(DIST, "mcq"));
if (process.argv.includes("--all")) {
  for (const target of TARGETS) await compile(join(DIST, `mcq-${target}`), target);
}
