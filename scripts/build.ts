/**
 * Compiles mcq into one self-contained executable with `bun build --compile`.
 *   bun run build          dist/mcq for this machine
 *   bun run build --all    also dist/mcq-<target> for every platform we ship, and dist/SHA256SUMS
 *                          over every executable in dist (check with `sha256sum -c`)
 * The version is embedded from package.json (src/main.ts imports it).
 *
 * Same commit, same bytes: each executable is compiled under the name `mcq` in a scratch
 * directory and then moved, because bun embeds the output file's name in the executable
 * (/$bunfs/root/<name>); so dist/mcq and dist/mcq-linux-x64 are the same file on a linux-x64
 * glibc machine. The source map is embedded too (--sourcemap: stack traces name src/*.ts
 * lines); the .map file bun also writes is not needed by anyone and is not shipped.
 */
import { mkdirSync, mkdtempSync, readdirSync, renameSync, rmSync } from "node:fs";
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

async function sha256(file: string): Promise<string> {
  const hasher = new Bun.CryptoHasher("sha256");
  hasher.update(await Bun.file(file).bytes());
  return hasher.digest("hex");
}

/** Compiles to dist/<name> (plus .exe for Windows); returns the file's name in dist. */
async function compile(name: string, target?: string): Promise<string> {
  const scratch = mkdtempSync(join(DIST, ".build-")); // in dist: a rename never crosses file systems
  try {
    const args = [process.execPath, "build", "--compile", "--minify", "--sourcemap", join(ROOT, "src/main.ts"), "--outfile", join(scratch, "mcq")];
    if (target !== undefined) args.push("--target", `bun-${target}`);
    const proc = Bun.spawn(args, { cwd: ROOT, stdout: "inherit", stderr: "inherit" });
    if ((await proc.exited) !== 0) throw new Error(`bun build failed for ${target ?? "this machine"}`);
    const exe = target === "windows-x64" ? ".exe" : "";
    renameSync(join(scratch, `mcq${exe}`), join(DIST, `${name}${exe}`));
    console.log(`built ${name}${exe} (${(Bun.file(join(DIST, name + exe)).size / 1e6).toFixed(1)} MB)`);
    return `${name}${exe}`;
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
}

mkdirSync(DIST, { recursive: true });
// Leftovers of older builds (per-file .sha256, .map) would otherwise sit beside what we ship.
for (const f of readdirSync(DIST)) if (/\.(sha256|map)$/.test(f) || f === "SHA256SUMS") rmSync(join(DIST, f));
const built = [await compile("mcq")];
if (process.argv.includes("--all")) {
  for (const target of TARGETS) built.push(await compile(`mcq-${target}`, target));
  const sums = await Promise.all(built.map(async (f) => `${await sha256(join(DIST, f))}  ${f}\n`));
  await Bun.write(join(DIST, "SHA256SUMS"), sums.join(""));
  console.log(`wrote SHA256SUMS (${built.length} files)`);
}
