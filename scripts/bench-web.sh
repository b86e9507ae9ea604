#!/usr/bin/env bash
# DICOMweb benchmark: pacsd against Orthanc 1.10 with its DICOMweb plugin (Debian's orthanc and
# orthanc-dicomweb), in one run, on one corpus loaded into both the same way (DCMTK storescu),
# measured with the same client (scripts/bench_web.py: latency over one keep-alive
# connection with Python's http.client, throughput with curl): QIDO
# study search p50/p99, QIDO instance list of a 600-instance series, series metadata (600 and
# 200 instances) cold and warm, WADO-RS series retrieval MB/s, frames per second, rendered and
# thumbnail p50, STOW-RS MB/s, and OHIF's time to first image (tests/js/ohif_check.mjs in
# headless Chromium, through a same-origin proxy since Orthanc has no CORS). Prints both sets
# of figures and pacsd/Orthanc ratios.
#
# pacsd runs with its defaults that cost it time: three replicas (on the same disk), every
# read checked against its recorded checksum, HTTP Basic authentication. Orthanc runs with
# authentication off and one copy of each file.
#
# Usage: scripts/bench-web.sh        (BIG=600 MID=200 SMALL_STUDIES=200 SIZE=512 to change)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
need storescu:dcmtk Orthanc:orthanc chromium:chromium
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || {
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq orthanc-dicomweb >/dev/null
}
python3 -c 'import requests' 2>/dev/null || python3 -m pip install --quiet requests
OHIF_DIR=$(bash scripts/ohif.sh)
cargo build --release --quiet --features jpegls
PACSD=$PWD/target/release/pacsd
BIG=${BIG:-600}; MID=${MID:-200}; SMALL_STUDIES=${SMALL_STUDIES:-200}; SIZE=${SIZE:-512}
workdir bench-web

echo "corpus: $SMALL_STUDIES small studies, series of $BIG and $MID CT images of ${SIZE}x${SIZE}"
$PACSD synth -o "$WORK/corpus/small" --studies "$SMALL_STUDIES" --per-study 3 --size 64 --first-study 100 >/dev/null
$PACSD synth -o "$WORK/corpus/big" --studies 1 --per-study "$BIG" --size "$SIZE" --first-study 500 >/dev/null
$PACSD synth -o "$WORK/corpus/mid" --studies 1 --per-study "$MID" --size "$SIZE" --first-study 501 >/dev/null
$PACSD synth -o "$WORK/stow-p" --studies 1 --per-study 100 --size "$SIZE" --first-study 600 >/dev/null
$PACSD synth -o "$WORK/stow-o" --studies 1 --per-study 100 --size "$SIZE" --first-study 601 >/dev/null
R=2.25.61171899517253458302
BIG_ST=$R.500; BIG_SE=$R.500.1; MID_ST=$R.501; MID_SE=$R.501.1

PP=$(free_port); PH=$(free_port); PO=$(free_port); OH=$(free_port)
pacsd_config_file "$WORK/pacsd.toml" "$WORK/p" "$PP" 3 "[http]
port = $PH"
cat >"$WORK/orthanc.json" <<EOF
{ "Name": "bench", "StorageDirectory": "$WORK/o/storage", "IndexDirectory": "$WORK/o/index",
  "DicomAet": "ORTHANC", "DicomPort": $PO, "HttpPort": $OH, "RemoteAccessAllowed": false,
  "AuthenticationEnabled": false, "DicomCheckCalledAet": false, "DicomAlwaysAllowStore": true,
  "DicomAlwaysAllowEcho": true, "SaveJobs": false,
  "Plugins": ["/usr/share/orthanc/plugins/libOrthancDicomWeb.so"],
  "DicomWeb": { "Enable": true, "Root": "/dicom-web/" } }
EOF
RUST_LOG=pacsd=warn $PACSD serve -c "$WORK/pacsd.toml" >"$WORK/pacsd.log" 2>&1 & PIDS+=($!)
Orthanc "$WORK/orthanc.json" >"$WORK/orthanc.log" 2>&1 & PIDS+=($!)
wait_echo PACSD "$PP"; wait_echo ORTHANC "$PO"
for _ in $(seq 1 100); do [ -s "$WORK/p/admin-password" ] && break; sleep 0.1; done
PW=$(cat "$WORK/p/admin-password")
echo "loading both with storescu"
/usr/bin/storescu -aec PACSD +sd +r 127.0.0.1 "$PP" "$WORK/corpus"
/usr/bin/storescu -aec ORTHANC +sd +r 127.0.0.1 "$PO" "$WORK/corpus"

# pacsd computes each instance's metadata in the background after ingest (with its preview):
# measure the archive as it is once that is done, as a viewer meets it.
for _ in $(seq 1 600); do
    curl -sf -u "admin:$PW" "http://127.0.0.1:$PH/metrics" | grep -q '^pacsd_preview_backlog 0$' && break
    sleep 0.5
done
echo "pacsd:";   P=$(python3 scripts/bench_web.py "http://127.0.0.1:$PH/dicom-web" admin "$PW" $BIG_ST $BIG_SE $MID_ST $MID_SE "$WORK/stow-p"); echo "$P"
echo "Orthanc:"; O=$(python3 scripts/bench_web.py "http://127.0.0.1:$OH/dicom-web" "" "" $BIG_ST $BIG_SE $MID_ST $MID_SE "$WORK/stow-o"); echo "$O"

TOKEN=$($PACSD account token -c "$WORK/pacsd.toml" admin --label bench)
# Time to first image of the big study in a fresh browser, and the part of it after OHIF's
# first DICOMweb request (OHIF's own loading and start-up, the same for both servers, left out).
ohif() {  # $1 base URL, $2 token or -: prints "first-image-ms from-first-request-ms"
    OHIF_PROXY=1 OHIF_POLL_MS=50 node tests/js/ohif_check.mjs "$OHIF_DIR" "$(free_port)" "$1" "$BIG_ST" "$2" 120000 \
        | python3 -c 'import json,sys; d=json.load(sys.stdin); print("%s %s" % (d["firstImageMs"], d.get("fromFirstRequestMs")) if not d["failures"] else "failed: %s" % d["failures"][:3])'
}
# pacsd's own time answering DICOMweb requests so far (seconds, from its /metrics).
served() {
    curl -sf -u "admin:$PW" "http://127.0.0.1:$PH/metrics" | python3 -c '
import re, sys
print(sum(float(m) for m in re.findall(r"^pacsd_request_duration_seconds_sum\{protocol=\"http\",operation=\"\w+ /dicom-web[^\n]*\} (\S+)$", sys.stdin.read(), re.M)))'
}
# One run each first, not counted: the first browser start reads OHIF's files from disk.
ohif "http://127.0.0.1:$PH/dicom-web" "$TOKEN" >/dev/null; ohif "http://127.0.0.1:$OH/dicom-web" - >/dev/null
OP=(); OO=(); OPD=(); OOD=()
S0=$(served)
for _ in 1 2 3; do
    read -r a b <<<"$(ohif "http://127.0.0.1:$PH/dicom-web" "$TOKEN")"; OP+=("$a"); OPD+=("$b")
    read -r a b <<<"$(ohif "http://127.0.0.1:$OH/dicom-web" -)"; OO+=("$a"); OOD+=("$b")
done
echo "OHIF first image (ms): pacsd ${OP[*]}; Orthanc ${OO[*]}"
echo "OHIF first DICOMweb request to first image (ms): pacsd ${OPD[*]}; Orthanc ${OOD[*]}"
echo "pacsd's own time answering OHIF's DICOMweb requests, per run (ms, all of them, not only those before the first image): $(python3 -c "print(round(($(served) - $S0) * 1000 / 3, 1))")"

python3 - "$P" "$O" "${OP[*]}" "${OO[*]}" "${OPD[*]}" "${OOD[*]}" <<'EOF'
import json, statistics, sys
p, o = json.loads(sys.argv[1]), json.loads(sys.argv[2])
def med(s):
    v = [float(x) for x in s.split() if x.replace('.', '', 1).isdigit()]
    return statistics.median(v) if v else None
rows = [
    ("QIDO study search p50 (ms)", p["qido_study_search_ms"]["p50"], o["qido_study_search_ms"]["p50"], "lower"),
    ("QIDO study search p99 (ms)", p["qido_study_search_ms"]["p99"], o["qido_study_search_ms"]["p99"], "lower"),
    ("QIDO instances of a 600-instance series p50 (ms)", p["qido_instances_600_ms"]["p50"], o["qido_instances_600_ms"]["p50"], "lower"),
    ("series metadata, 600 instances, cold (ms)", p["metadata_600_ms"]["cold"], o["metadata_600_ms"]["cold"], "lower"),
    ("series metadata, 600 instances, warm p50 (ms)", p["metadata_600_ms"]["warm_p50"], o["metadata_600_ms"]["warm_p50"], "lower"),
    ("series metadata, 200 instances, cold (ms)", p["metadata_200_ms"]["cold"], o["metadata_200_ms"]["cold"], "lower"),
    ("series metadata, 200 instances, warm p50 (ms)", p["metadata_200_ms"]["warm_p50"], o["metadata_200_ms"]["warm_p50"], "lower"),
    ("WADO-RS series retrieval (MB/s)", p["wado_series_mb_s"], o["wado_series_mb_s"], "higher"),
    ("frames per second (4 clients)", p["frames_per_s"], o["frames_per_s"], "higher"),
    ("rendered JPEG p50 (ms)", p["rendered_ms"]["p50"], o["rendered_ms"]["p50"], "lower"),
    ("thumbnail p50 (ms)", p["thumbnail_ms"]["p50"] if isinstance(p["thumbnail_ms"], dict) else None,
     o["thumbnail_ms"]["p50"] if isinstance(o["thumbnail_ms"], dict) else None, "lower"),
    ("STOW-RS (MB/s)", p["stow_mb_s"], o["stow_mb_s"], "higher"),
    ("OHIF time to first image, median of 3 (ms)", med(sys.argv[3]), med(sys.argv[4]), "lower"),
    ("OHIF first DICOMweb request to first image, median of 3 (ms)", med(sys.argv[5]), med(sys.argv[6]), "lower"),
]
print(f"\n| measure | pacsd | Orthanc | pacsd advantage |\n|---|---|---|---|")
for name, a, b, better in rows:
    if a is None or b is None or not a or not b:
        ratio = "n/a"
    else:
        ratio = f"{(b / a if better == 'lower' else a / b):.1f}x"
    print(f"| {name} | {a} | {b if b is not None else 'not served'} | {ratio} |")
EOF
