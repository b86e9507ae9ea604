#!/usr/bin/env bash
# HA timing under load: for each heartbeat/lease/margin setting, the HA lab runs with both
# nodes busy (3 ingest clients of 256x256 CT through the service IP, previews rendered, 2
# processes spinning on the CPU), first LOAD_SECS seconds with no fault (every epoch claimed
# then is a false takeover), then N crash failovers (kill -9 of the primary) under the same
# load. Prints per setting: false takeovers, crash service gap p50/p99/max, acknowledged but
# lost (0: every acknowledged instance is found and retrieved), epochs with two primaries.
#
# Usage: scripts/bench-ha-timing.sh [N] [LOAD_SECS] [SETTING...]
#   defaults: N=12, LOAD_SECS=90, settings 100/600/200 100/450/150 50/400/100
# Needs root (network namespaces). Takes about LOAD_SECS + N * 10 s per setting and writes
# about 10 GB into a temporary directory (removed after each setting).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-12}
LOAD=${2:-90}
shift $(( $# > 2 ? 2 : $# ))
SETTINGS=("$@")
[ ${#SETTINGS[@]} -gt 0 ] || SETTINGS=(100/600/200 100/450/150 50/400/100)
export TCP_NODELAY=1
cargo build --release --features jpegls --tests --quiet
# The whole output of each setting (with the nodes' logs if a check fails) is kept in
# target/bench-ha-timing-<setting>.log.
for s in "${SETTINGS[@]}"; do
    log="target/bench-ha-timing-${s//\//-}.log"
    PACSD_FAILOVERS=$N PACSD_HA_TIMING=$s PACSD_LOAD_SECS=$LOAD PACSD_FAULTS=crash \
        cargo test --release --features jpegls --test ha_lab failover_benchmark -- --ignored --nocapture >"$log" 2>&1 || true
    grep -E '^(failover benchmark|  [a-zA-Z])' "$log" || true
    grep -A1 'panicked' "$log" | head -2 || true
done
