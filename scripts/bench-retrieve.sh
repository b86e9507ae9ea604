#!/usr/bin/env bash
# Retrieve benchmark: the same corpus held by pacsd (3 local replicas), Orthanc and DCMTK
# dcmqrscp, each asked with DCMTK movescu to C-MOVE it to a DCMTK storescp sink and with DCMTK
# getscu to C-GET it, in one run on loopback, ROUNDS times over (the servers take turns in each
# round). Prints, per operation and server, the median instances/s and MB/s with the spread
# over the rounds, and the median ratios to Orthanc and to dcmqrscp; then the sink's pace: the
# same files sent straight to the same sink (`pacsd store`, no archive behind it). A C-MOVE
# goes over one association and the sink answers each C-STORE before the next is sent, so a
# server near that pace is waiting on the sink, not on itself.
#
# pacsd runs with its defaults: a Pending response after the first sub-operation, then at most
# one per 100 ms ([retrieve].pending_interval_ms); Orthanc and dcmqrscp send one after every
# sub-operation. PENDING_MS=0 gives pacsd one after every sub-operation too.
#
# Usage: [ROUNDS=3] [SINK_PDU=bytes] [DISCARD=1] [PENDING_MS=ms] scripts/bench-retrieve.sh [INSTANCES]
# (default 2000 CT-like 512x512 images; the sink storescp and getscu receive PDUs of SINK_PDU
# bytes, default 131072). By default the sink and getscu write every file they receive (and
# the files are counted); with DISCARD=1 they receive and discard (`--ignore`; the objects
# are counted in their logs), so that their own disk writes do not share the two cores with
# the server measured.
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
pacsd_retrieve_config "$PP" "$SINK_PORT" "${PENDING_MS:+$(printf '[retrieve]\npending_interval_ms = %s' "$PENDING_MS")}"
RUST_LOG=pacsd=warn $PACSD serve -c "$WORK/pacsd.toml" >"$WORK/pacsd.log" 2>&1 & PIDS+=($!)

# Orthanc
mkdir -p "$WORK/orthanc"
cat >"$WORK/orthanc.json" <<EOF
{ "Name": "bench", "StorageDirectory": "$WORK/orthanc/storage", "IndexDirectory": "$WORK/orthanc/index",
  "DicomAet": "ORTHANC", "DicomPort": $PO, "HttpServerEnabled": false, "HttpPort": $(free_port),
  "DicomCheckCalledAet": false, "DicomAlwaysAllowStore": true, "DicomAlwaysAllowEcho": true,
  "DicomAlwaysAllowMove": true, "DicomAlwaysAllowGet": true, "StorageCompression": false, "Plugins": [], "SaveJobs": false,
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
PDU=${SINK_PDU:-131072}
# One timed retrieve of the whole corpus, study by study: record "op server inst/s MB/s secs got".
# WHERE is the directory the files arrive in, or with DISCARD=1 the log that names each.
timed() {
    local op=$1 name=$2 where=$3; shift 3
    local t0 t1 s got
    : >"$WORK/$op-$name.log"
    # No case pays for writing back what the one before it left dirty (the sink's files).
    sync
    t0=$(date +%s.%N)
    for s in $(seq 3000 $((3000 + STUDIES - 1))); do
        "$@" -k QueryRetrieveLevel=STUDY -k "StudyInstanceUID=$R.$s" >>"$WORK/$op-$name.log" 2>&1
    done
    t1=$(date +%s.%N)
    if [ -n "${DISCARD:-}" ]; then
        got=$(grep -c -E "Received (Store|C-STORE) Request" "$where" || true)
    else
        got=$(find "$where" -type f | wc -l)
    fi
    python3 -c "import sys; n,b,t0,t1,got=int(sys.argv[1]),int(sys.argv[2]),float(sys.argv[3]),float(sys.argv[4]),int(sys.argv[5]); dt=t1-t0; print(f'$op $name {n/dt:.1f} {b/1e6/dt:.1f} {dt:.2f} {got}')" "$N" "$BYTES" "$t0" "$t1" "$got" >>"$RESULTS"
}
for round in $(seq "${ROUNDS:-3}"); do
    echo "== round $round"
    for t in "orthanc ORTHANC $PO" "dcmqrscp DCMQRSCP $PQ" "pacsd PACSD $PP"; do
        set -- $t
        name=$1 aet=$2 port=$3
        rm -rf "$WORK/sink"; mkdir -p "$WORK/sink"
        if [ -n "${DISCARD:-}" ]; then
            sink_keep=(-v --ignore); sink_where="$WORK/sink-$name.log"
            get_keep=(-v --ignore); get_where="$WORK/get-$name.log"
        else
            sink_keep=(-od "$WORK/sink"); sink_where="$WORK/sink"
            get_keep=(-od "$WORK/got"); get_where="$WORK/got"
        fi
        storescp -aet SINK --max-pdu "$PDU" "${sink_keep[@]}" "$SINK_PORT" >"$WORK/sink-$name.log" 2>&1 & SINK=$!
        wait_echo SINK "$SINK_PORT"
        timed move "$name" "$sink_where" movescu -S -aec "$aet" -aem SINK 127.0.0.1 "$port"
        kill "$SINK"; wait "$SINK" 2>/dev/null || true
        rm -rf "$WORK/got"; mkdir -p "$WORK/got"
        timed get "$name" "$get_where" getscu -S -aec "$aet" --max-pdu "$PDU" "${get_keep[@]}" 127.0.0.1 "$port"
    done
    # The sink's pace: the corpus (files the page cache holds) sent straight to the same sink
    # over one association, C-STOREs in turn as a C-MOVE's are, by `pacsd store` (the SCU code
    # C-MOVE uses; DCMTK storescu re-encodes each file and is slower than any server here).
    rm -rf "$WORK/sink"; mkdir -p "$WORK/sink"
    storescp -aet SINK --max-pdu "$PDU" "${sink_keep[@]}" "$SINK_PORT" >"$WORK/sink-floor.log" 2>&1 & SINK=$!
    wait_echo SINK "$SINK_PORT"
    sync
    t0=$(date +%s.%N)
    $PACSD store --no-progress --called SINK -p "$SINK_PORT" "$WORK/corpus" >"$WORK/floor.log" 2>&1
    t1=$(date +%s.%N)
    kill "$SINK"; wait "$SINK" 2>/dev/null || true
    python3 -c "import sys; n,b,t0,t1=int(sys.argv[1]),int(sys.argv[2]),float(sys.argv[3]),float(sys.argv[4]); dt=t1-t0; print(f'floor direct {n/dt:.1f} {b/1e6/dt:.1f} {dt:.2f} {n}')" "$N" "$BYTES" "$t0" "$t1" >>"$RESULTS"
done
rm -rf "$WORK/sink" "$WORK/got"
echo
python3 - "$RESULTS" "$N" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
runs = {}
for op, name, ips, mbs, secs, got in rows:
    runs.setdefault((op, name), []).append((float(ips), float(mbs), int(got)))
print(f"{'op':5} {'server':9} {'inst/s':>8} {'(min-max)':>15} {'MB/s':>7} {'received':>10} {'x Orthanc':>9} {'x dcmqrscp':>10}")
for op in ("move", "get"):
    med = {name: statistics.median(r[0] for r in rs) for (o, name), rs in runs.items() if o == op}
    for name in ("orthanc", "dcmqrscp", "pacsd"):
        rs = runs.get((op, name), [])
        if not rs:
            continue
        ips = [r[0] for r in rs]
        got = min(r[2] for r in rs)
        print(f"{op:5} {name:9} {med[name]:>8.1f} {min(ips):>7.1f}-{max(ips):<7.1f} "
              f"{statistics.median(r[1] for r in rs):>7.1f} {got:>5}/{sys.argv[2]:<4} "
              f"{med[name] / med['orthanc']:>9.2f} {med[name] / med['dcmqrscp']:>10.2f}")
floor = runs.get(("floor", "direct"), [])
if floor:
    ips = [r[0] for r in floor]
    f = statistics.median(ips)
    move = {name: statistics.median(r[0] for r in rs) for (o, name), rs in runs.items() if o == "move"}
    print(f"sink's pace: the files sent straight to the same sink over one association, {f:.1f} inst/s "
          f"({min(ips):.1f}-{max(ips):.1f}); C-MOVE as a share of it: "
          + ", ".join(f"{n} {move[n] / f:.0%}" for n in ("orthanc", "dcmqrscp", "pacsd") if n in move)
          + f"; 1.5x Orthanc would be {1.5 * move['orthanc'] / f:.0%} of it")
print(f"({len(next(iter(runs.values())))} rounds; min-max is the spread of instances/s; "
      "received is the fewest files any round delivered)")
PY
