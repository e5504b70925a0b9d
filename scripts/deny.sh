#!/usr/bin/env bash
# Supply-chain checks with cargo-deny (configuration: deny.toml), installing the pinned
# cargo-deny from crates.io first when it is missing or another version.
#
#   scripts/deny.sh offline     bans, licenses, sources: no network at all (`--frozen`: cargo
#                               reads only Cargo.lock and the crates already fetched by the
#                               build; nothing else is fetched). `make lint` runs this.
#   scripts/deny.sh advisories  the RustSec advisories: fetches the advisory database from
#                               GitHub, so it needs the network. `make audit` runs this.
#
# Both look at the dependency graph of the host platform (the services run on Linux only), which
# is also what keeps `offline` offline: the crates of other platforms (Windows, Android, ...)
# are never downloaded by the build, and cargo cannot describe them without fetching them.
set -euo pipefail
cd "$(dirname "$0")/.."

# Newest cargo-deny that builds with the toolchain in use (rustc 1.95; it needs 1.88). Installing
# it compiles it: about 7.5 minutes on the 2-core machine.
VERSION=0.20.2
CARGO=${CARGO:-cargo}

log() { printf 'deny: %s\n' "$*" >&2; }

if [ "$("$CARGO" deny --version 2>/dev/null)" != "cargo-deny $VERSION" ]; then
  log "installing cargo-deny $VERSION from crates.io (a few minutes, once)"
  "$CARGO" install --locked "cargo-deny@$VERSION"
fi

host=$(rustc -vV | sed -n 's/^host: //p')
case "${1:-}" in
  offline)
    exec "$CARGO" deny --frozen --target "$host" check --hide-inclusion-graph \
      bans licenses sources
    ;;
  advisories)
    exec "$CARGO" deny --locked --target "$host" check --hide-inclusion-graph advisories
    ;;
  *)
    log "usage: $0 offline|advisories"
    exit 2
    ;;
esac
