/**
 * `npm pack` (prepack): writes the declarations of the package's entry, src/fixture.ts, into
 * types/ with tsc, then keeps only the files its types reach through relative imports, so the
 * tarball carries the public API's types and not one per source file.
 */
import { existsSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { Glob } from "bun";

const ROOT = resolve(import.meta.dir, "..");
const TYPES = join(ROOT, "types");
const ENTRY = join(TYPES, "fixture.d.ts");

rmSync(TYPES, { recursive: true, force: true });
const tsc = Bun.spawnSync([join(ROOT, "node_modules/.bin/tsc"), "-p", join(ROOT, "tsconfig.types.json")], { stdout: "inherit", stderr: "inherit" });
if (tsc.exitCode !== 0) throw new Error(`tsc -p tsconfig.types.json failed (exit ${tsc.exitCode})`);

// Relative imports get a .js ending, which every moduleResolution accepts (node16/nodenext require one).
const IMPORT = /(\bfrom\s+|\bimport\()"(\.{1,2}\/[^"]+?)(\.js)?"/g;
const keep = new Set<string>();
const todo = [ENTRY];
for (let file = todo.pop(); file !== undefined; file = todo.pop()) {
  if (keep.has(file)) continue;
  keep.add(file);
  const text = readFileSync(file, "utf8");
  for (const [, , spec] of text.matchAll(IMPORT)) {
    const target = resolve(dirname(file), `${spec}.d.ts`);
    if (!existsSync(target)) throw new Error(`${relative(ROOT, file)} imports ${spec}, which has no declarations`);
    todo.push(target);
  }
  writeFileSync(file, text.replace(IMPORT, '$1"$2.js"'));
}
for (const name of new Glob("**/*.d.ts").scanSync(TYPES)) {
  if (!keep.has(join(TYPES, name))) rmSync(join(TYPES, name));
}
console.log(`types/: ${[...keep].map((f) => relative(TYPES, f)).sort().join(", ")}`);
