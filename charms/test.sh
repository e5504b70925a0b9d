#!/usr/bin/env bash
# Lint and unit-test the Juju charms. Safe to run from any directory, on a clean clone:
# creates charms/.venv when needed, installs the pinned requirements-dev.txt into it and the
# charms' shared package (charms/common) in editable mode. Once installed, it runs offline.
set -euo pipefail

charms="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$charms")"
venv="$charms/.venv"
python="${PYTHON:-python3}"

stamp="$venv/.requirements-dev.sha256"
want="$(cat "$charms/requirements-dev.txt" "$charms"/*/requirements.txt "$charms/common/pyproject.toml" |
  sha256sum | cut -d' ' -f1)"
if [[ ! -x "$venv/bin/python" ]]; then
  echo "==> creating $venv"
  "$python" -m venv "$venv"
fi
if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  echo "==> installing charms/requirements-dev.txt"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r "$charms/requirements-dev.txt"
  echo "==> installing charms/common (editable)"
  # Its dependencies are pinned in the charms' requirements.txt, installed just above; the
  # build backend (setuptools) is pinned in requirements-dev.txt.
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    --no-deps --no-build-isolation -e "$charms/common"
  echo "$want" >"$stamp"
fi

cd "$repo"
echo "==> ruff check charms"
"$venv/bin/ruff" check charms
echo "==> ruff format --check charms"
"$venv/bin/ruff" format --check charms

# Each charm is tested in its own pytest process (both have a top-level `charm` module), and
# so is charms/common (the tests of both charms' files and of the shared code).
passed=0
failed=0
status=0
for charm in common webhook-gateway planner; do
  echo "==> pytest charms/$charm"
  log="$(mktemp)"
  set +e
  (cd "$charms/$charm" && "$venv/bin/python" -m pytest -q -p no:cacheprovider tests) \
    2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  set -e
  [[ $rc -eq 0 ]] || status=1
  summary="$(grep -E '[0-9]+ (passed|failed|error)' "$log" | tail -1 || true)"
  [[ -n "$summary" ]] || status=1
  read -r p f < <(awk '{
      for (i = 2; i <= NF; i++) {
        w = $i; gsub(/[^a-z]/, "", w)
        if (w == "passed") p += $(i - 1)
        if (w == "failed" || w == "error" || w == "errors") f += $(i - 1)
      }
    } END { print p + 0, f + 0 }' <<<"$summary")
  passed=$((passed + p))
  failed=$((failed + f))
  rm -f "$log"
done

echo "charms: $passed passed, $failed failed"
exit $status
