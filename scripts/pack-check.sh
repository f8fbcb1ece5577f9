#!/usr/bin/env bash
# The npm package as a user gets it (tracker issue 16), for .ci/run: npm pack; the tarball holds
# only what the package needs; installed into an empty project, `bunx mcq --version` and
# `npx mcq --version` work, npx without bun on PATH says so, the types check and Node gets a clear
# error; installed into a copy of examples/bun-test, the example's `bun test` passes (mcq started
# through the fixture). Prints "ok: …" or "FAIL: …" per check, the example's bun test output,
# and "N passed, M failed" over the checks; exits non-zero if anything failed. Works only in
# temporary directories: nothing in the tree is installed into or changed.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
bun=$(readlink -f node_modules/.bin/bun)
tsc=$root/node_modules/.bin/tsc
version=$(node -p 'require("./package.json").version')
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
passed=0
failed=0

# check NAME COMMAND…: runs it, counts it, shows its output when it fails.
check() {
  local name=$1 out
  shift
  if out=$("$@" 2>&1); then
    echo "ok: $name"
    passed=$((passed + 1))
  else
    echo "FAIL: $name"
    printf '%s\n' "$out" | sed 's/^/    /'
    failed=$((failed + 1))
  fi
}

# PATH with bun (as a user of Bun has it), and PATH without any bun (a Node-only machine).
mkdir "$work/bun-bin"
ln -s "$bun" "$work/bun-bin/bun"
ln -s "$bun" "$work/bun-bin/bunx" # Bun acts as bunx when called by that name
with_bun="$work/bun-bin:$PATH"
without_bun=$(printf '%s' "$PATH" | tr ':' '\n' | while read -r dir; do [ -x "$dir/bun" ] || printf '%s:' "$dir"; done)
without_bun=${without_bun%:}

if ! npm pack --pack-destination "$work" >"$work/pack.log" 2>&1; then
  cat "$work/pack.log"
  echo "FAIL: npm pack"
  echo "0 passed, 1 failed"
  exit 1
fi
tgz=$(ls "$work"/mcq-*.tgz)
echo "ok: npm pack: $(basename "$tgz"), $(tar tzf "$tgz" | wc -l) files, $(du -k "$tgz" | cut -f1) KB"
passed=$((passed + 1))

contents_ok() {
  local files extra
  files=$(tar tzf "$tgz" | sort)
  for need in package/package.json package/README.md package/LICENSE package/bin/mcq.js package/bin/not-bun.js \
    package/src/main.ts package/src/fixture.ts package/types/fixture.d.ts package/types/config.d.ts; do
    grep -qx "$need" <<<"$files" || { echo "missing: $need"; return 1; }
  done
  extra=$(grep -Ev '^package/((package\.json|README\.md|LICENSE)|(bin|src|types)/.*)$' <<<"$files"; grep -E '\.test\.ts$' <<<"$files")
  [ -z "$extra" ] || { echo "not needed: $extra"; return 1; }
  ! grep -q '"private"' <(tar xzOf "$tgz" package/package.json) || { echo "package.json is private"; return 1; }
}
check "the tarball holds package.json, README, LICENSE, bin/, src/ (no tests) and types/ only" contents_ok

mkdir "$work/app"
cd "$work/app"
npm init -y >/dev/null
check "npm install of the tarball into an empty project" npm install --no-audit --no-fund --prefer-offline "$tgz"

# prints_version PATH COMMAND…: the command, run with that PATH, prints the package's version
# line: "mcq <version> (bun …, sqlite …)".
prints_version() {
  local path=$1 got
  shift
  got=$(PATH="$path" "$@") || return 1
  case "$got" in "mcq $version (bun "*", sqlite "*")") ;; *) echo "printed: $got"; return 1 ;; esac
}
check "bunx mcq --version (bun on PATH)" prints_version "$with_bun" bunx mcq --version
check "bunx mcq --version (bunx started by its path, no bun on PATH)" \
  prints_version "$without_bun" "$root/node_modules/.bin/bunx" mcq --version
check "npx mcq --version (bun on PATH)" prints_version "$with_bun" npx --no-install mcq --version

npx_without_bun() {
  local err code
  err=$(env PATH="$without_bun" npx --no-install mcq --version 2>&1 >/dev/null)
  code=$?
  [ "$code" -eq 1 ] && grep -q 'mcq runs on Bun, and no `bun` was found on PATH' <<<"$err" || { echo "exit $code: $err"; return 1; }
}
check "npx mcq --version without bun on PATH: exit 1 and says Bun is needed" npx_without_bun

node_import() {
  local err
  err=$(node --input-type=module -e 'await import("mcq")' 2>&1)
  grep -q "mcq's startServer runs on Bun" <<<"$err" || { echo "$err"; return 1; }
}
check "import \"mcq\" under Node: a clear error" node_import

cat >"$work/app/check.mts" <<'EOF'
import { startServer, type Mcq, type StartOptions } from "mcq";
const options: StartOptions = { store: { dir: "/tmp/x" }, port: 0, maxBody: 10, sync: "normal" };
const mq: Mcq = await startServer(options);
const where: [number, string, string | null] = [mq.port, mq.address, mq.dir];
await mq.stop();
// @ts-expect-error: not a setting's name
await startServer({ maxbody: 1 });
// @ts-expect-error: not a sync mode
await startServer({ sync: "fast" });
await startServer({ store: "memory" }).then((m) => m.stop());
export { where };
EOF
for resolution in bundler nodenext; do
  module=$([ "$resolution" = bundler ] && echo preserve || echo nodenext)
  check "import { startServer } from \"mcq\" is typed (strict, moduleResolution $resolution, no Bun types)" \
    "$tsc" --noEmit --strict --target esnext --module "$module" --moduleResolution "$resolution" check.mts
done

cp -r "$root/examples/bun-test" "$work/example"
cd "$work/example"
rm -rf node_modules package-lock.json
check "npm install of the tarball into examples/bun-test" npm install --no-audit --no-fund --prefer-offline "$tgz"
check "examples/bun-test typechecks against the installed package" "$tsc" -p .
echo "== examples/bun-test: bun test"
PATH="$with_bun" "$bun" test 2>&1
example=$?

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$example" -eq 0 ]
