#!/usr/bin/env bash
# Starts mcq on Postgres for a test harness that gives each server its own -H directory (the
# conformance suite): the schema is named after the -H path, so each server starts on an empty
# store, and a server restarted on the same -H finds what the last one stored.
#   scripts/pg-server.sh MCQ_COMMAND... [mcq flags, including -H DIR]
# Needs MCQ_TEST_PG (scripts/pg.sh start prints it).
set -euo pipefail
: "${MCQ_TEST_PG:?MCQ_TEST_PG is not set (eval \"\$(scripts/pg.sh start)\"; export MCQ_TEST_PG)}"
home=""
prev=""
for arg in "$@"; do
  if [ "$prev" = "-H" ] || [ "$prev" = "--home" ]; then home=$arg; fi
  case "$arg" in --home=*) home=${arg#--home=} ;; esac
  prev=$arg
done
[ -n "$home" ] || exec "$@" # --help, --version, a bad flag: nothing to store
schema="mcq_conf_$(printf '%s' "$(realpath -m "$home")" | md5sum | cut -c1-16)"
sep='?'
case "$MCQ_TEST_PG" in *\?*) sep='&' ;; esac
exec "$@" --store "${MCQ_TEST_PG}${sep}schema=${schema}"
