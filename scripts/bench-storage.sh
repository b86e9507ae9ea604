#!/usr/bin/env bash
# Storage read benchmark (`pacsd storage bench`), in one run:
#   1. three local replicas throttled to 20, 40 and 80 MB/s (object_store's ThrottledStore);
#   2. three Garage S3 sites on loopback (scripts/s3-cluster.sh --independent), throttled the
#      same way;
#   3. the same Garage sites unthrottled.
# For objects of 0.5, 8 and 64 MB it prints (a) one GET from the fastest replica, (b) an equal
# split across the replicas, (c) pacsd's adaptive striped read (SHA-256 check included), the
# ratio of (c) to the sum of the replicas' bandwidths measured alone, and (c)/(a).
#
# Usage: scripts/bench-storage.sh [ROUNDS]    (default 5; needs `garage` on PATH for 2 and 3)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

ROUNDS=${1:-5}
cargo build --release --quiet
PACSD=target/release/pacsd
workdir bench-storage

echo "== 1. local replicas at 20/40/80 MB/s"
$PACSD storage bench --mbps 20,40,80 --rounds "$ROUNDS"

if ! command -v garage >/dev/null; then
    echo "garage not on PATH (cargo install garage --locked): Garage runs skipped" >&2
    exit 0
fi
bash scripts/s3-cluster.sh start "$WORK/garage" 29600 --independent >/dev/null
trap 'bash scripts/s3-cluster.sh stop "$WORK/garage"; rm -rf "$WORK"' EXIT
# shellcheck disable=SC1091
source "$WORK/garage/env"
args=()
for u in $PACSD_S3_REPLICAS; do
    args+=(--replica "$u&region=$AWS_REGION&access_key_id=$AWS_ACCESS_KEY_ID&secret_access_key=$AWS_SECRET_ACCESS_KEY&allow_http=true")
done
echo
echo "== 2. Garage sites at 20/40/80 MB/s"
$PACSD storage bench "${args[@]}" --mbps 20,40,80 --rounds "$ROUNDS"
echo
echo "== 3. Garage sites, unthrottled (loopback; the three servers and the reader share the CPU)"
$PACSD storage bench "${args[@]}" --rounds "$ROUNDS"
