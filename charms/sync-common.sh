#!/usr/bin/env bash
# Copy the shared charm code (charms/common/runner_common) into each charm's lib/.
# With --check, only report (exit 1) when a copy differs from the canonical source.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
status=0
for charm in webhook-gateway planner; do
  dest="$here/$charm/lib/runner_common"
  if [[ "${1:-}" == "--check" ]]; then
    if ! diff -r -x __pycache__ "$here/common/runner_common" "$dest" >/dev/null 2>&1; then
      echo "charms/$charm/lib/runner_common differs from charms/common/runner_common;" \
        "run charms/sync-common.sh" >&2
      status=1
    fi
  else
    rm -rf "$dest"
    mkdir -p "$(dirname "$dest")"
    cp -r "$here/common/runner_common" "$dest"
    find "$dest" -name __pycache__ -prune -exec rm -rf {} +
  fi
done
exit $status
