#!/usr/bin/env bash
# Storage read benchmark (`pacsd storage bench`), in one run:
#   1. three local replicas slowed to 20, 40 and 80 MB/s (storage/paced.rs: 64 KiB pieces
#      released on time at that speed, as a network replica streams);
#   2. three Garage S3 sites on loopback (scripts/s3-cluster.sh --independent), throttled the
#      same way;
#   3. the same Garage sites unthrottled;
#   4. three replica directories on one real HDFS (Hadoop's MiniDFSCluster, scripts/minidfs.sh,
#      three DataNodes), unthrottled;
#   5. the seed's three sites: a local directory, a Garage S3 site and an HDFS directory;
#   6. (as root) the Garage sites of 3 again, inside a private network namespace whose loopback routes have
#      `quickack 1`: Garage 2.5 never sets TCP_NODELAY on its S3 sockets, so on loopback the
#      last small segment of many responses waits for the client's delayed ACK (~40 ms; seen
#      in `curl` timings of 1 MiB ranges: 2-5 ms or 42-45 ms). Acknowledging at once removes
#      that server-side artifact and shows what the read paths do against a server without it.
# For objects of 0.5, 8 and 64 MB it prints (a) one GET from the fastest replica (and that GET
# followed by the digest of its bytes, the check pacsd does on every read), (b) an equal
# split across the replicas, (c) pacsd's adaptive striped read (digest check included), the
# ratio of (c) to the sum of the replicas' bandwidths measured alone, and (c)/(a).
#
# Usage: scripts/bench-storage.sh [ROUNDS]    (default 5; needs `garage` on PATH for 2 to 6,
#        Java 17 and Maven for 4 and 5)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

ROUNDS=${1:-5}
cargo build --release --quiet --features hdfs
PACSD=target/release/pacsd
workdir bench-storage

echo "== 1. local replicas at 20/40/80 MB/s"
$PACSD storage bench --mbps 20,40,80 --rounds "$ROUNDS"

if ! command -v garage >/dev/null; then
    echo "garage not on PATH (cargo install garage --locked): Garage runs skipped" >&2
    exit 0
fi
NS=pacsd-bench-$$
cleanup() {
    for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done
    bash scripts/s3-cluster.sh stop "$WORK/garage" || true
    if ip netns list 2>/dev/null | grep -qw "$NS"; then
        ip netns exec "$NS" bash scripts/s3-cluster.sh stop "$WORK/garage-ns" || true
        ip netns del "$NS"
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
bash scripts/s3-cluster.sh start "$WORK/garage" 29600 --independent >/dev/null
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

if command -v java >/dev/null && command -v mvn >/dev/null; then
    start_minidfs "$WORK/hdfs" --datanodes 3
    echo
    echo "== 4. three directories on one HDFS (MiniDFSCluster, 3 DataNodes), unthrottled"
    $PACSD storage bench --replica "$HDFS_URL/bench/r1" --replica "$HDFS_URL/bench/r2" \
        --replica "$HDFS_URL/bench/r3" --rounds "$ROUNDS"
    echo
    echo "== 5. a local directory, a Garage S3 site and an HDFS directory, unthrottled"
    $PACSD storage bench --replica "$WORK/local-site" --replica "${args[1]}" \
        --replica "$HDFS_URL/bench/sites" --rounds "$ROUNDS"
else
    echo "no java/mvn: HDFS runs 4 and 5 skipped" >&2
fi

if [[ $(id -u) != 0 ]] || ! command -v ip >/dev/null; then
    echo "not root or no iproute2: run 6 (quickack namespace) skipped" >&2
    exit 0
fi
ip netns add "$NS"
ip netns exec "$NS" ip link set lo up
for dst in 127.0.0.0/8 127.0.0.1; do
    ip netns exec "$NS" ip route change local "$dst" dev lo table local proto kernel scope host \
        src 127.0.0.1 quickack 1
done
ip netns exec "$NS" bash scripts/s3-cluster.sh start "$WORK/garage-ns" 29600 --independent >/dev/null
echo
echo "== 6. Garage sites, unthrottled, client ACKs at once (namespace $NS, loopback quickack 1)"
ip netns exec "$NS" $PACSD storage bench "${args[@]}" --rounds "$ROUNDS"
