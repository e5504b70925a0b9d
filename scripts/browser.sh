#!/usr/bin/env bash
# Makes headless Chromium and its WebDriver (chromedriver) available for the console's browser
# tests, idempotently: nothing to do when both are on PATH; otherwise installs Debian's chromium
# and chromium-driver packages when running as root, or says what to run and fails.
set -euo pipefail

log() { printf 'browser: %s\n' "$*" >&2; }

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  log "chromium and chromedriver are installed"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  log "chromium or chromedriver is missing and installing them needs root"
  log "run: sudo apt-get install -y chromium chromium-driver"
  exit 1
fi
log "installing the Debian packages chromium and chromium-driver"
# A lock held by another apt run (a parallel test's install) is waited for, not failed on.
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=600 update -qq
apt-get -o DPkg::Lock::Timeout=600 install -y -qq chromium chromium-driver >/dev/null
command -v chromium >/dev/null && command -v chromedriver >/dev/null
log "chromium and chromedriver are installed"
