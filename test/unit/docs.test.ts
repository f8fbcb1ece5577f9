/**
 * Issue 13, item 11: the README's file map names every file of src/, scripts/ and test/, and no
 * doc or source comment points at a file outside the repository (a reader of a checkout, or of
 * a release, has nothing beside it).
 */
import { expect, test } from "bun:test";
import { readdirSync, readFileSync } from "node:fs";
import { join, relative, resolve } from "node:path";

const ROOT = resolve(import.meta.dir, "../..");

function files(dir: string): string[] {
  return readdirSync(join(ROOT, dir), { recursive: true, withFileTypes: true })
    .filter((f) => f.isFile())
    .map((f) => relative(ROOT, join(f.parentPath, f.name)))
    .sort();
}

/** The fenced block under the README's "Where things are" heading. */
function fileMap(): string {
  const readme = readFileSync(join(ROOT, "README.md"), "utf8");
  const section = readme.split(/^## /m).find((s) => s.startsWith("Where things are"));
  const block = section && /```\n([\s\S]*?)```/.exec(section)?.[1];
  if (!block) throw new Error("README.md has no file map (a ``` block under '## Where things are')");
  return block;
}

test("issue 13.11: the README's file map names every file in src/, scripts/ and test/", () => {
  const named = new Set(fileMap().match(/\S+/g));
  const missing = ["src", "scripts", "test"].flatMap(files).filter((f) => !named.has(f));
  expect(missing).toEqual([]);
});

test("issue 13.11: no doc or source comment points outside the repository", () => {
  // The project's contract and notes live beside the repository, not in it: docs/protocol.md
  // and docs/design.md are the repository's own. Shell scripts that run the conformance suite
  // (scripts/minimal.sh) do take it from beside the checkout: that is CI's input, not a pointer.
  const outside = /\.\.\/shared|\bshared\/(SPEC|DECISIONS|STYLE|conformance|tools|reference)|\b(SPEC|DECISIONS|STYLE)\.md\b/;
  const text = (f: string) => readFileSync(join(ROOT, f), "utf8");
  const exempt = (f: string) => f === "test/unit/docs.test.ts" || (f.endsWith(".sh") && text(f).includes("conformance/run"));
  const docs = ["README.md", ...["docs", "src", "scripts", "test"].flatMap(files)].filter((f) => !exempt(f));
  const pointing = docs.filter((f) => outside.test(text(f)));
  expect(pointing).toEqual([]);
});
