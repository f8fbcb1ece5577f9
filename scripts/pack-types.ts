/**
 * `npm pack` (prepack): writes the declarations of the package's entry, src/fixture.ts, into
 * types/ with tsc, then keeps only the files its types reach through relative imports, so the
 * tarball carries the public API's types and not one per source file.
 */
import { existsSync, readFileSync, rmSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { Glob } from "bun";

const ROOT = resolve(import.meta.dir, "..");
const TYPES = join(ROOT, "types");
const ENTRY = join(TYPES, "fixture.d.ts");

rmSync(TYPES, { recursive: true, force: true });
const tsc = Bun.spawnSync([join(ROOT, "node_modules/.bin/tsc"), "-p", join(ROOT, "tsconfig.types.json")], { stdout: "inherit", stderr: "inherit" });
if (tsc.exitCode !== 0) throw new Error(`tsc -p tsconfig.types.json failed (exit ${tsc.exitCode})`);

const keep = new Set<string>();
const todo = [ENTRY];
for (let file = todo.pop(); file !== undefined; file = todo.pop()) {
  if (keep.has(file)) continue;
  keep.add(file);
  for (const [, spec] of readFileSync(file, "utf8").matchAll(/(?:\bfrom\s+|\bimport\()"(\.{1,2}\/[^"]+)"/g)) {
    const target = resolve(dirname(file), `${spec}.d.ts`);
    if (!existsSync(target)) throw new Error(`${relative(ROOT, file)} imports ${spec}, which has no declarations`);
    todo.push(target);
  }
}
for (const name of new Glob("**/*.d.ts").scanSync(TYPES)) {
  if (!keep.has(join(TYPES, name))) rmSync(join(TYPES, name));
}
console.log(`types/: ${[...keep].map((f) => relative(TYPES, f)).sort().join(", ")}`);
