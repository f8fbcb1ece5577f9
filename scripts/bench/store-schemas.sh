# Sourced by the bench scripts that start servers of their own (features.sh, delayed.sh): with
# STORE=postgres://…, each server gets a schema of its own on that Postgres, dropped at the end.
# SCHEMA_TAG names the script in the schema names.
schemas=()
store_args=()
next_store() { # sets store_args: the --store arguments of the next server, if any (not in a subshell: schemas grows)
  store_args=()
  [ -n "${STORE:-}" ] || return 0
  local schema=mcq_bench_${SCHEMA_TAG:-x}_$$_${#schemas[@]}
  schemas+=("$schema")
  case $STORE in *\?*) store_args=(--store "$STORE&schema=$schema") ;; *) store_args=(--store "$STORE?schema=$schema") ;; esac
}
drop_schemas() {
  [ -n "${STORE:-}" ] && [ ${#schemas[@]} -gt 0 ] || return 0
  for s in "${schemas[@]}"; do echo "DROP SCHEMA IF EXISTS $s CASCADE;"; done | psql -q -X "${STORE%\?*}" >/dev/null 2>&1 || true
}
