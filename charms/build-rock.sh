#!/usr/bin/env bash
# Build the workload rock of a charm from this repository's sources.
#
#   charms/build-rock.sh webhook-gateway|planner [rockcraft pack options...]
#
# rockcraft only sees its project directory, while the binary is built from the whole Cargo
# workspace; so the repository's files (tracked and untracked-but-not-ignored) are copied to a
# temporary directory with the charm's rockcraft.yaml at its root, and packed there. The
# resulting .rock is copied to charms/<charm>/.
set -euo pipefail
charm="${1:?usage: $0 webhook-gateway|planner [rockcraft options]}"
shift
charms="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$charms")"
[[ -f "$charms/$charm/rockcraft.yaml" ]] || { echo "unknown charm: $charm" >&2; exit 2; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
git -C "$repo" ls-files -z --cached --others --exclude-standard -- . ':!charms' |
  (cd "$repo" && tar --null -T - -cf -) | tar -xf - -C "$work"
cp "$charms/$charm/rockcraft.yaml" "$work/rockcraft.yaml"
(cd "$work" && rockcraft pack "$@")
cp "$work"/*.rock "$charms/$charm/"
ls -1 "$charms/$charm"/*.rock
