#!/usr/bin/env bash
# Checks that schema/src/schema.rs is what `diesel print-schema` generates from the migrations:
# migrates a scratch database with diesel_cli, prints the schema and compares (the
# configuration is schema/diesel.toml). Installs the pinned diesel_cli when missing (about
# 2 minutes on the 2-core machine, once). Needs PostgreSQL (`make services`).
set -euo pipefail
cd "$(dirname "$0")/../schema"

VERSION=2.3.14
CARGO=${CARGO:-cargo}
DIESEL="${CARGO_HOME:-$HOME/.cargo}/bin/diesel"
log() { printf 'schema: %s\n' "$*" >&2; }

if [ "$("$DIESEL" --version 2>/dev/null | sed -n 's/^ *Version: *//p')" != "$VERSION" ]; then
  log "installing diesel_cli $VERSION from crates.io (a few minutes, once)"
  "$CARGO" install --locked --no-default-features --features postgres "diesel_cli@$VERSION"
fi

base=${TEST_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}
name="schema_check_$$"
url="${base%/*}/$name"
psql "$base" -qtA -c "CREATE DATABASE $name" >/dev/null
trap 'psql "$base" -qtA -c "DROP DATABASE IF EXISTS $name WITH (FORCE)" >/dev/null' EXIT

generated=$(mktemp)
# `migration run` would rewrite src/schema.rs itself: run the migrations without touching it.
DATABASE_URL="$url" "$DIESEL" migration run --locked-schema >/dev/null
DATABASE_URL="$url" "$DIESEL" print-schema >"$generated"
if ! diff -u src/schema.rs "$generated"; then
  log "src/schema.rs differs from what diesel print-schema generates from the migrations (above)"
  exit 1
fi
log "src/schema.rs matches the migrations"
