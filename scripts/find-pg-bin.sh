#!/usr/bin/env bash
# Prints the path of a PostgreSQL server binary (pg_config, initdb, postgres, pg_ctl):
# $PG_BIN first, then the newest /usr/lib/postgresql/*/bin, then PATH.
set -euo pipefail
name=$1
if [ -n "${PG_BIN:-}" ] && [ -x "$PG_BIN/$name" ]; then echo "$PG_BIN/$name"; exit 0; fi
for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
  if [ -x "$dir/$name" ]; then echo "$dir/$name"; exit 0; fi
done
command -v "$name"
