#!/usr/bin/env bash
# Checks the shell scripts the services ship with shellcheck (`make lint` runs this), installing
# Debian's shellcheck package first when it is missing and this runs as root; otherwise says
# what to run and fails.
#
# Checked: manager/gce/startup.sh, the startup script of every gce runner VM.
set -euo pipefail
cd "$(dirname "$0")/.."

SCRIPTS=(manager/gce/startup.sh)

log() { printf 'shellcheck: %s\n' "$*" >&2; }

if ! command -v shellcheck >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    log "shellcheck is missing and installing it needs root"
    log "run: sudo apt-get install -y shellcheck"
    exit 1
  fi
  log "installing the Debian package shellcheck"
  # A lock held by another apt run is waited for, not failed on.
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq shellcheck >/dev/null 2>&1 || {
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq shellcheck >/dev/null
  }
fi
exec shellcheck "${SCRIPTS[@]}"
