#!/usr/bin/env bash
# Failover benchmark in the HA lab (network namespaces, scripts/ha-lab.sh): N crash failovers
# (kill -9 of the primary), N planned switchovers (`pacsd ha switchover`), N planned stops of
# the primary (SIGTERM: it hands over first) and N planned stops of the standby (SIGTERM: the
# primary goes on alone), while a client in its own namespace stores through the service IP. Prints the service gap (last success before
# the fault to the first success after it) p50/p99/max, failed client operations,
# acknowledged-but-lost instances (every acknowledged instance is looked up with C-FIND and
# fetched with C-GET afterwards) and epochs in which two nodes served as primary.
#
# Usage: scripts/bench-failover.sh [N]     (default 20; needs root)
# The test also reads PACSD_HA_TIMING (heartbeat/lease/margin ms), PACSD_LOAD_SECS (load on
# both nodes) and PACSD_FAULTS (which rows): scripts/bench-ha-timing.sh sets them.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-20}
PACSD_FAILOVERS=$N cargo test --release --test ha_lab failover_benchmark -- --ignored --nocapture 2>&1 |
    grep -v '^\s*Compiling\|^\s*Finished\|^\s*Running'
