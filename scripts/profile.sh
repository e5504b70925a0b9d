#!/usr/bin/env bash
# Profiles one group of `make bench` with perf and renders a flamegraph of the whole machine
# (the services, PostgreSQL, RabbitMQ and the load generator share its cores, so all of them
# are sampled): target/profile/<group>.svg, with the raw samples beside it.
#
#   scripts/profile.sh gateway|consumer|e2e|recompute|fanout|scaling
#
# Needs perf (Debian's linux-perf; installed when missing) and inferno (installed with cargo
# when missing). perf samples the CPU clock, which works on machines without hardware counters.
set -euo pipefail
cd "$(dirname "$0")/.."
group=${1:?usage: scripts/profile.sh gateway|consumer|e2e|recompute|fanout|scaling}
out=target/profile
mkdir -p "$out"

if ! command -v perf >/dev/null; then
    apt-get install -y linux-perf
fi
if ! command -v inferno-flamegraph >/dev/null; then
    cargo install --locked inferno@0.12.8
fi
bash scripts/services.sh
# Builds the services and the bench (a binary of the `tests` member) alike.
cargo build --release --workspace --bins

# 10,000 stream subscribers need as many sockets.
ulimit -n "$(ulimit -Hn)"
perf record -a -g -F 499 -e cpu-clock -o "$out/$group.data" -- \
    env BENCH_ONLY="$group" ./target/release/bench
perf script -i "$out/$group.data" 2>/dev/null | inferno-collapse-perf > "$out/$group.folded"
inferno-flamegraph --title "make bench: $group (whole machine)" < "$out/$group.folded" > "$out/$group.svg"
echo "profile: $out/$group.svg (samples: $out/$group.data, folded stacks: $out/$group.folded)"
