#!/usr/bin/env bash
# Pack a charm. Its `runner-common` part copies the shared package from charms/common, outside
# the charm's directory; charmcraft (4.5 or later) mounts the whole Git repository into its
# build instance when CHARMCRAFT_EXPERIMENTAL_MONOREPO is set. On an Ubuntu 24.04 host,
# `--destructive-mode` works as well (the build then runs on the host, which sees every file).
#
#   charms/pack-charm.sh webhook-gateway|planner [charmcraft pack options...]
set -euo pipefail
charm="${1:?usage: $0 webhook-gateway|planner [charmcraft pack options]}"
shift
charms="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
[[ -f "$charms/$charm/charmcraft.yaml" ]] || { echo "unknown charm: $charm" >&2; exit 2; }
cd "$charms/$charm"
CHARMCRAFT_EXPERIMENTAL_MONOREPO=1 charmcraft pack "$@"
ls -1 "$charms/$charm"/*.charm
