#!/usr/bin/env bash
# C-FIND benchmark, in one run on loopback, with one client (`pacsd find-latency`: each query
# repeated over a single association, p50/p99/max per query):
#   1. pacsd with 1,000,000 instances (20,000 studies x 5 series x 10 images; the index is
#      filled directly, no objects);
#   2. pacsd and Orthanc holding the same 100,000 instances (2,000 studies x 5 x 10), both
#      loaded with DCMTK storescu, then queried with the same client and queries.
#
# Usage: scripts/bench-find.sh [ROUNDS]     (default 200)
# Needs: dcmtk and orthanc from Debian's packages (installed if missing, as root).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ROUNDS=${1:-200}
need storescu:dcmtk Orthanc:orthanc
cargo build --release --quiet
PACSD=$PWD/target/release/pacsd
workdir bench-find
pacsd_config() { # dir port
    pacsd_config_file "$1.toml" "$1" "$2" 1 "$FIND_NODE"
}

R=2.25.61171899517253458302   # synthetic UID root (src/synth.rs)
# The queries of issue #3: study level by PatientID, PatientName wildcard, StudyDate range,
# AccessionNumber; series level within one study.
latency() { # label aet port study
    local label=$1 aet=$2 port=$3 study=$4
    echo "== $label"
    $PACSD find-latency --called "$aet" --port "$port" --rounds "$ROUNDS" \
        -q "PatientID|STUDY|PatientID=PAT00123;StudyInstanceUID;StudyDate;ModalitiesInStudy" \
        -q "PatientName wildcard|STUDY|PatientName=Synthetic^Patient0012*;StudyInstanceUID" \
        -q "StudyDate range|STUDY|StudyDate=20100101-20100107;StudyInstanceUID;PatientName" \
        -q "AccessionNumber|STUDY|AccessionNumber=ACC$(printf %05d "$study");StudyInstanceUID" \
        -q "Series in study|SERIES|StudyInstanceUID=$R.$study;SeriesInstanceUID;Modality;NumberOfSeriesRelatedInstances" \
        | tee "$WORK/$label.txt"
}

echo "### 1. pacsd, 1,000,000 instances"
D1=$WORK/pacsd-1m; P1=$(free_port); pacsd_config "$D1" "$P1"
time $PACSD index fill-synthetic -c "$D1.toml" --studies 20000 --series 5 --instances 10 --first-study 1 | tail -1
RUST_LOG=pacsd=warn $PACSD serve -c "$D1.toml" >"$D1.log" 2>&1 & PIDS+=($!)
wait_echo PACSD "$P1"
latency pacsd-1m PACSD "$P1" 12345
kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true

echo "### 2. the same 100,000 instances in pacsd and Orthanc"
$PACSD synth -o "$WORK/corpus" --studies 2000 --series 5 --per-study 10 --size 0 --first-study 1 | tail -1
D2=$WORK/pacsd-100k; P2=$(free_port); pacsd_config "$D2" "$P2"
RUST_LOG=pacsd=warn $PACSD serve -c "$D2.toml" >"$D2.log" 2>&1 & PIDS+=($!)
D3=$WORK/orthanc; P3=$(free_port); mkdir -p "$D3"
cat >"$D3.json" <<EOF
{ "Name": "bench", "StorageDirectory": "$D3/storage", "IndexDirectory": "$D3/index",
  "DicomAet": "ORTHANC", "DicomPort": $P3, "HttpServerEnabled": false, "HttpPort": $(free_port),
  "DicomCheckCalledAet": false, "DicomAlwaysAllowStore": true, "DicomAlwaysAllowEcho": true,
  "DicomAlwaysAllowFind": true, "LimitFindResults": 0, "LimitFindInstances": 0,
  "StorageCompression": false, "Plugins": [], "SaveJobs": false }
EOF
Orthanc "$D3.json" >"$D3.log" 2>&1 & PIDS+=($!)
wait_echo PACSD "$P2"; wait_echo ORTHANC "$P3"
load() { # aet port
    local pids=() s
    for part in 0 1 2 3; do
        # four parallel storescu, each a quarter of the study directories
        ( for s in $(seq $((part + 1)) 4 2000); do echo "$WORK/corpus/$s"; done | xargs storescu -aec "$1" +sd 127.0.0.1 "$2" ) &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p"; done
}
time load PACSD "$P2"
time load ORTHANC "$P3"
latency pacsd-100k PACSD "$P2" 1234
latency orthanc-100k ORTHANC "$P3" 1234

echo
echo "### p50 ratio Orthanc / pacsd at 100,000 instances (higher = pacsd faster)"
python3 - "$WORK/pacsd-100k.txt" "$WORK/orthanc-100k.txt" <<'PY'
import sys
def load(p):
    rows = {}
    for line in open(p).read().splitlines()[1:]:
        parts = line.rsplit(None, 5)
        rows[parts[0].strip()] = (int(parts[1]), float(parts[2]), float(parts[3]))
    return rows
a, b = load(sys.argv[1]), load(sys.argv[2])
print(f"{'query':24} {'pacsd p50':>10} {'Orthanc p50':>12} {'ratio':>7} {'matches p/O':>12}")
for k in a:
    pa, ob = a[k], b.get(k)
    if ob:
        print(f"{k:24} {pa[1]:>10.3f} {ob[1]:>12.3f} {ob[1]/pa[1]:>7.1f} {pa[0]:>5}/{ob[0]:<5}")
PY
