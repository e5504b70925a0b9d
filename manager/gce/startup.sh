#!/bin/bash
# Startup script of a runner VM made by the runner manager's gce backend.
#
# Reads the runner's just-in-time configuration from the metadata server (the manager sets it
# under the instance attribute github-runner-jitconfig), runs the GitHub Actions runner once with
# it, and powers the VM off when the runner exits, so the manager sees the VM TERMINATED and
# deletes it. The configuration is a credential: it reaches the runner through its environment
# (ACTIONS_RUNNER_INPUT_JITCONFIG, the runner's environment form of --jitconfig), never through
# an argument, so it shows in no process list (/proc/*/cmdline) and in no sudo log.
#
# The image must hold the runner in RUNNER_DIR (default /opt/actions-runner) and a user to run
# it as (RUNNER_USER, default runner). GCE_METADATA_URL (default
# http://metadata.google.internal) is where the metadata server is.
set -euo pipefail

RUNNER_DIR="${RUNNER_DIR:-/opt/actions-runner}"
RUNNER_USER="${RUNNER_USER:-runner}"
GCE_METADATA_URL="${GCE_METADATA_URL:-http://metadata.google.internal}"
ATTRIBUTES="${GCE_METADATA_URL%/}/computeMetadata/v1/instance/attributes"

# shellcheck disable=SC2317 # called by the EXIT trap
power_off() {
    # Whatever happened, an ended runner must not keep the VM running.
    systemctl poweroff || shutdown -h now
}
trap power_off EXIT

ACTIONS_RUNNER_INPUT_JITCONFIG="$(curl --silent --show-error --fail --retry 5 \
    --retry-connrefused --max-time 10 --header "Metadata-Flavor: Google" \
    "${ATTRIBUTES}/github-runner-jitconfig")"
if [ -z "${ACTIONS_RUNNER_INPUT_JITCONFIG}" ]; then
    echo "no github-runner-jitconfig in the instance metadata" >&2
    exit 1
fi
# Exported, so sudo's --preserve-env passes it on: it is in the runner's environment only, which
# no other user can read. The runner clears it once read.
export ACTIONS_RUNNER_INPUT_JITCONFIG

cd "${RUNNER_DIR}"
status=0
sudo --preserve-env=ACTIONS_RUNNER_INPUT_JITCONFIG -u "${RUNNER_USER}" ./run.sh || status=$?
unset ACTIONS_RUNNER_INPUT_JITCONFIG
echo "runner exited with status ${status}; powering off"
exit "${status}"
