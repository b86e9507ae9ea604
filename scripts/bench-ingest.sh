#!/usr/bin/env bash
# Ingest benchmark: the same corpora stored with DCMTK storescu into
#   pacsd (3 local replicas, quorum 2), pacsd (1 replica), DCMTK storescp (file sink), Orthanc,
# over 1 association and over 4 parallel associations, all in one run on loopback.
# Prints instances/s and MB/s for each and the ratios to Orthanc, and first what the disk
# allows for the flushes the durability contract needs (one durable file: create, write,
# fsync, rename, fsync the directory; then the contract's floor: the copies on every replica
# and the index commit per object, nothing else), and each pacsd figure as a share of it.
# Every case starts on a clean page cache's worth of dirty data (`sync` before it): a target
# does not pay for writing back what the one before it (or the corpus generator) left unsynced.
# pacsd runs as configured by default (background previews on); `pacsd3-nopv` is the same
# node with previews off, to show what rendering costs the C-STORE path; `pacsd3-hdfs` has
# two local replicas and one on a real HDFS (Hadoop's MiniDFSCluster, scripts/minidfs.sh; run
# when Java and Maven are there, or when named in TARGETS). For nodes with
# previews, the time until the last preview was stored is printed too.
#
# Usage: scripts/bench-ingest.sh [CT_COUNT] [SMALL_COUNT]     (defaults 1000 and 5000)
#        TARGETS="pacsd3 pacsd3-nopv" scripts/bench-ingest.sh  (a subset of the targets)
# Needs: dcmtk and orthanc from Debian's packages (installed if missing, as root).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

CT_COUNT=${1:-1000}
SMALL_COUNT=${2:-5000}

need storescu:dcmtk Orthanc:orthanc
cargo build --release --quiet --features hdfs --bin pacsd --example disk_floor
PACSD=target/release/pacsd

workdir bench-ingest

echo "== this disk: what the durability contract's flushes alone allow, in $WORK"
# examples/disk_floor.rs: one durable file, then per object the copies on every replica and
# the index commit, nothing else; the rates go to $WORK/floor.txt for the summary.
target/release/examples/disk_floor "$WORK/disk-floor" "$WORK/floor.txt"

echo "== generating corpora in $WORK"
# 4 studies each, so 4 parallel associations get one study directory each.
$PACSD synth -o "$WORK/ct" --studies 4 --per-study $((CT_COUNT / 4)) --size 512 --first-study 1000 >/dev/null
$PACSD synth -o "$WORK/small" --studies 4 --per-study $((SMALL_COUNT / 4)) --size 64 --first-study 2000 >/dev/null
for c in ct small; do
    n=$(find "$WORK/$c" -type f | wc -l)
    bytes=$(du -sb "$WORK/$c" | cut -f1)
    echo "$c: $n files, $((bytes / 1000000)) MB"
done

# start_<target> <data dir> <port> ; sets PID, AET
start_pacsd() { # replicas dir port [previews: true|false] [one more replica URL]
    local replicas=$1 dir=$2 port=$3 previews=${4:-true}
    EXTRA_REPLICA=${5:-} pacsd_config_file "$dir.toml" "$dir" "$port" "$replicas" "[preview]
enabled = $previews"
    RUST_LOG=pacsd=warn $PACSD serve --config "$dir.toml" >"$dir.log" 2>&1 &
    PID=$!; AET=PACSD
}
start_storescp() { # dir port
    mkdir -p "$1"
    storescp --fork -aet STORESCP +xa -od "$1" "$2" >"$1.log" 2>&1 &
    PID=$!; AET=STORESCP
}
start_orthanc() { # dir port
    mkdir -p "$1"
    cat >"$1.json" <<EOF
{
  "Name": "bench", "StorageDirectory": "$1/storage", "IndexDirectory": "$1/index",
  "DicomAet": "ORTHANC", "DicomPort": $2, "DicomServerEnabled": true,
  "HttpServerEnabled": false, "HttpPort": $(free_port), "RemoteAccessAllowed": false,
  "DicomCheckCalledAet": false, "DicomAlwaysAllowStore": true, "DicomAlwaysAllowEcho": true,
  "StorageCompression": false, "Plugins": [], "SaveJobs": false
}
EOF
    Orthanc "$1.json" >"$1.log" 2>&1 &
    PID=$!; AET=ORTHANC
}

RESULTS="$WORK/results.txt"
: >"$RESULTS"
run_case() { # target corpus parallel
    local target=$1 corpus=$2 par=$3
    local dir="$WORK/srv-$target-$corpus-$par" port
    port=$(free_port)
    case $target in
        pacsd3) start_pacsd 3 "$dir" "$port" ;;
        pacsd3-nopv) start_pacsd 3 "$dir" "$port" false ;;
        pacsd1) start_pacsd 1 "$dir" "$port" ;;
        pacsd3-hdfs) start_pacsd 2 "$dir" "$port" true "$HDFS_URL/ingest/$(basename "$dir")" ;;
        storescp) start_storescp "$dir" "$port" ;;
        orthanc) start_orthanc "$dir" "$port" ;;
    esac
    local pid=$PID aet=$AET
    PIDS+=("$pid")
    wait_echo "$aet" "$port"
    local n bytes t0 t1 failed=0
    n=$(find "$WORK/$corpus" -type f | wc -l)
    bytes=$(du -sb "$WORK/$corpus" | cut -f1)
    sync
    t0=$(date +%s.%N)
    if [ "$par" = 1 ]; then
        storescu -aec "$aet" +sd +r 127.0.0.1 "$port" "$WORK/$corpus" >"$dir.client.log" 2>&1 || failed=1
    else
        local cpids=()
        for study in "$WORK/$corpus"/*/; do
            storescu -aec "$aet" +sd +r 127.0.0.1 "$port" "$study" >>"$dir.client.log" 2>&1 &
            cpids+=($!)
        done
        for c in "${cpids[@]}"; do wait "$c" || failed=1; done
    fi
    t1=$(date +%s.%N)
    if [[ $target == pacsd1 || $target == pacsd3 || $target == pacsd3-hdfs ]]; then
        # Previews are rendered in the background: how long after the last C-STORE
        # response until every one is stored.
        until $PACSD index stats --config "$dir.toml" 2>/dev/null | grep -qx 'previews_pending 0'; do
            sleep 0.2
        done
        python3 -c "import sys; print(f'   previews all stored {float(sys.argv[2]) - float(sys.argv[1]):.2f} s after the last C-STORE response')" \
            "$t1" "$(date +%s.%N)"
    fi
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    if [ "$failed" != 0 ]; then echo "!! $target $corpus x$par: storescu reported failures (see $dir.client.log)" >&2; fi
    python3 - "$target" "$corpus" "$par" "$n" "$bytes" "$t0" "$t1" >>"$RESULTS" <<'PY'
import sys
t, c, p, n, b, t0, t1 = sys.argv[1:]
dt = float(t1) - float(t0)
print(f"{t} {c} {p} {int(n)/dt:.1f} {int(b)/1e6/dt:.1f} {dt:.2f}")
PY
    # The case's files stay until the end: removing thousands of files makes this VM's disk
    # (ext4 mounted with online discard) slow to create files for seconds after, and the next
    # case would pay for it (measured: 3 replicas, small objects, 614-650 per s after a case
    # that kept its files, 382-388 after one that removed them).
}

DEFAULT_TARGETS="orthanc storescp pacsd1 pacsd3 pacsd3-nopv"
if command -v java >/dev/null && command -v mvn >/dev/null; then
    DEFAULT_TARGETS="$DEFAULT_TARGETS pacsd3-hdfs"
fi
if [[ " ${TARGETS:-$DEFAULT_TARGETS} " == *" pacsd3-hdfs "* ]]; then
    start_minidfs "$WORK/hdfs" --datanodes 3
    echo "== HDFS for pacsd3-hdfs: $HDFS_URL"
fi
for corpus in ct small; do
    for par in 1 4; do
        for target in ${TARGETS:-$DEFAULT_TARGETS}; do
            echo "== $target, $corpus, $par association(s)"
            run_case "$target" "$corpus" "$par"
        done
    done
done

echo
python3 - "$RESULTS" "$WORK/floor.txt" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1])]
floor = {(c, int(r), p): float(v) for c, r, p, v in (l.split() for l in open(sys.argv[2]))}
replicas = {"pacsd1": 1, "pacsd3": 3, "pacsd3-nopv": 3}
print(f"{'target':11} {'corpus':6} {'assoc':>5} {'inst/s':>9} {'MB/s':>8} {'secs':>7} {'x Orthanc':>9} {'of floor':>8}")
base = {(r[1], r[2]): float(r[3]) for r in rows if r[0] == "orthanc"}
for t, c, p, ips, mbs, secs in rows:
    ratio = float(ips) / base[(c, p)] if (c, p) in base else float("nan")
    f = floor.get((c, replicas.get(t), p))
    share = f"{float(ips) / f:.0%}" if f else ""
    print(f"{t:11} {c:6} {p:>5} {ips:>9} {mbs:>8} {secs:>7} {ratio:>9.2f} {share:>8}")
PY
