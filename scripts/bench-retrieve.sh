#!/usr/bin/env bash
# Retrieve benchmark: the same corpus held by pacsd (3 local replicas), Orthanc and DCMTK
# dcmqrscp, each asked with DCMTK movescu to C-MOVE it to a DCMTK storescp sink, in one run on
# loopback. Prints instances/s and MB/s for each and the ratios to Orthanc.
#
# Usage: [SINK_PDU=bytes] scripts/bench-retrieve.sh [INSTANCES]   (default 2000 CT-like 512x512
# images; the sink storescp receives PDUs of SINK_PDU bytes, default 131072)
# Needs: dcmtk and orthanc from Debian's packages (installed if missing, as root).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
N=${1:-2000}
STUDIES=4
need storescu:dcmtk Orthanc:orthanc
cargo build --release --quiet
PACSD=$PWD/target/release/pacsd
workdir bench-retrieve

echo "== corpus: $N instances in $STUDIES studies"
$PACSD synth -o "$WORK/corpus" --studies $STUDIES --per-study $((N / STUDIES)) --size 512 --first-study 3000 | tail -1
BYTES=$(du -sb "$WORK/corpus" | cut -f1)
R=2.25.61171899517253458302

SINK_PORT=$(free_port)
PP=$(free_port); PO=$(free_port); PQ=$(free_port)

# pacsd
cat >"$WORK/peers.toml" <<EOF
[[peer]]
ae_title = "SINK"
host = "127.0.0.1"
port = $SINK_PORT
EOF
cat >"$WORK/pacsd.toml" <<EOF
[node]
bind = "127.0.0.1"
port = $PP
[index]
path = "$WORK/pacsd/index.sqlite"
[storage]
replicas = ["$WORK/pacsd/r1", "$WORK/pacsd/r2", "$WORK/pacsd/r3"]
[access]
peers_file = "peers.toml"
unknown_ae_services = ["echo", "store", "move"]
EOF
RUST_LOG=pacsd=warn $PACSD serve -c "$WORK/pacsd.toml" >"$WORK/pacsd.log" 2>&1 & PIDS+=($!)

# Orthanc
mkdir -p "$WORK/orthanc"
cat >"$WORK/orthanc.json" <<EOF
{ "Name": "bench", "StorageDirectory": "$WORK/orthanc/storage", "IndexDirectory": "$WORK/orthanc/index",
  "DicomAet": "ORTHANC", "DicomPort": $PO, "HttpServerEnabled": false, "HttpPort": $(free_port),
  "DicomCheckCalledAet": false, "DicomAlwaysAllowStore": true, "DicomAlwaysAllowEcho": true,
  "DicomAlwaysAllowMove": true, "StorageCompression": false, "Plugins": [], "SaveJobs": false,
  "DicomModalities": { "sink": [ "SINK", "127.0.0.1", $SINK_PORT ] } }
EOF
Orthanc "$WORK/orthanc.json" >"$WORK/orthanc.log" 2>&1 & PIDS+=($!)

# dcmqrscp
mkdir -p "$WORK/dcmqrscp/db"
cat >"$WORK/dcmqrscp.cfg" <<EOF
NetworkTCPPort  = $PQ
MaxPDUSize      = 131072
MaxAssociations = 16
HostTable BEGIN
sink = (SINK, 127.0.0.1, $SINK_PORT)
HostTable END
VendorTable BEGIN
VendorTable END
AETable BEGIN
DCMQRSCP $WORK/dcmqrscp/db RW (100000, 100000mb) ANY
AETable END
EOF
dcmqrscp -c "$WORK/dcmqrscp.cfg" >"$WORK/dcmqrscp.log" 2>&1 & PIDS+=($!)

wait_echo PACSD "$PP"; wait_echo ORTHANC "$PO"; wait_echo DCMQRSCP "$PQ"
echo "== loading the corpus into each (storescu, 1 association)"
for t in "PACSD $PP" "ORTHANC $PO" "DCMQRSCP $PQ"; do
    set -- $t
    storescu -aec "$1" +sd +r 127.0.0.1 "$2" "$WORK/corpus" >"$WORK/load-$1.log" 2>&1 || { echo "loading $1 failed:" >&2; tail -5 "$WORK/load-$1.log" >&2; tail -5 "$WORK/pacsd.log" >&2; exit 1; }
done

RESULTS="$WORK/results.txt"; : >"$RESULTS"
for t in "orthanc ORTHANC $PO" "dcmqrscp DCMQRSCP $PQ" "pacsd PACSD $PP"; do
    set -- $t
    name=$1 aet=$2 port=$3
    rm -rf "$WORK/sink"; mkdir -p "$WORK/sink"
    storescp -aet SINK --max-pdu "${SINK_PDU:-131072}" -od "$WORK/sink" "$SINK_PORT" >"$WORK/sink-$name.log" 2>&1 & SINK=$!
    wait_echo SINK "$SINK_PORT"
    t0=$(date +%s.%N)
    for s in $(seq 3000 $((3000 + STUDIES - 1))); do
        movescu -S -aec "$aet" -aem SINK -k QueryRetrieveLevel=STUDY -k "StudyInstanceUID=$R.$s" 127.0.0.1 "$port" >>"$WORK/move-$name.log" 2>&1
    done
    t1=$(date +%s.%N)
    kill "$SINK"; wait "$SINK" 2>/dev/null || true
    got=$(find "$WORK/sink" -type f | wc -l)
    python3 -c "import sys; n,b,t0,t1,got=int(sys.argv[1]),int(sys.argv[2]),float(sys.argv[3]),float(sys.argv[4]),int(sys.argv[5]); dt=t1-t0; print(f'$name {n/dt:.1f} {b/1e6/dt:.1f} {dt:.2f} {got}')" "$N" "$BYTES" "$t0" "$t1" "$got" >>"$RESULTS"
done
echo
python3 - "$RESULTS" "$N" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1])]
base = {r[0]: float(r[1]) for r in rows}["orthanc"]
print(f"{'server':10} {'inst/s':>9} {'MB/s':>8} {'secs':>7} {'received':>9} {'x Orthanc':>9}")
for name, ips, mbs, secs, got in rows:
    print(f"{name:10} {ips:>9} {mbs:>8} {secs:>7} {got:>5}/{sys.argv[2]:<4} {float(ips)/base:>9.2f}")
PY
