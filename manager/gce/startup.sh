#!/bin/bash
# Startup script of a runner VM made by the runner manager's gce backend.
#
# Reads the runner's just-in-time configuration from the metadata server (the manager sets it
# under the instance attribute github-runner-jitconfig), runs the GitHub Actions runner once with
# it, and powers the VM off when the runner exits, so the manager sees the VM TERMINATED and
# deletes it. The configuration is a credential: it is passed in the environment, never on a
# command line or in a log.
#
# The image must hold the runner in RUNNER_DIR (default /opt/actions-runner) and a user to run
# it as (RUNNER_USER, default runner).
set -euo pipefail

RUNNER_DIR="${RUNNER_DIR:-/opt/actions-runner}"
RUNNER_USER="${RUNNER_USER:-runner}"
METADATA="http://metadata.google.internal/computeMetadata/v1/instance/attributes"

# shellcheck disable=SC2317 # called by the EXIT trap
power_off() {
    # Whatever happened, an ended runner must not keep the VM running.
    systemctl poweroff || shutdown -h now
}
trap power_off EXIT

jit_config="$(curl --silent --show-error --fail --retry 5 --retry-connrefused \
    --max-time 10 --header "Metadata-Flavor: Google" "${METADATA}/github-runner-jitconfig")"
if [ -z "${jit_config}" ]; then
    echo "no github-runner-jitconfig in the instance metadata" >&2
    exit 1
fi

cd "${RUNNER_DIR}"
# run.sh reads the configuration from ACTIONS_RUNNER_INPUT_JITCONFIG, the environment form of
# --jitconfig, so it never shows in the process list.
status=0
sudo --preserve-env=ACTIONS_RUNNER_INPUT_JITCONFIG -u "${RUNNER_USER}" \
    env ACTIONS_RUNNER_INPUT_JITCONFIG="${jit_config}" ./run.sh || status=$?
echo "runner exited with status ${status}; powering off"
exit "${status}"
