#!/usr/bin/env bash
# Portal page times on an archive of 100,000 instances: 99,950 filled into the index directly
# (1,999 studies x 5 series x 10; no objects) and one real study of 50 instances stored with
# DCMTK storescu (its page checks every copy on the three replicas; its ZIP reads them).
# Each page is fetched ROUNDS times by curl with a signed-in session; the script prints the
# median and 95th percentile of the whole response time (HTML only: thumbnails are their own
# requests, served from the stored previews).
#
# Usage: scripts/bench-portal.sh [ROUNDS]     (default 50)
# Needs: dcmtk and curl from Debian's packages (installed if missing, as root).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ROUNDS=${1:-50}
need storescu:dcmtk curl:curl
cargo build --release --quiet
PACSD=$PWD/target/release/pacsd
workdir bench-portal
D=$WORK/pacsd; P=$(free_port); H=$(free_port)
pacsd_config_file "$D.toml" "$D" "$P" 3 "[http]
port = $H"
time $PACSD index fill-synthetic -c "$D.toml" --studies 1999 --series 5 --instances 10 --first-study 1 | tail -1
$PACSD synth -o "$WORK/real" --studies 1 --series 5 --per-study 10 --size 256 --first-study 2000 | tail -1
echo "a long benchmark password" | $PACSD user add bench --role admin -c "$D.toml"
RUST_LOG=pacsd=warn $PACSD serve -c "$D.toml" >"$D.log" 2>&1 & PIDS+=($!)
wait_echo PACSD "$P"
TCP_NODELAY=1 storescu -aec PACSD +sd +r 127.0.0.1 "$P" "$WORK/real"
B=http://127.0.0.1:$H
J=$WORK/cookies
curl -s -c "$J" -b "$J" -o /dev/null "$B/portal/login"
CSRF=$(awk '$6 == "pacsd_login" {print $7}' "$J")
curl -s -c "$J" -b "$J" -o /dev/null --data-urlencode name=bench \
    --data-urlencode "password=a long benchmark password" --data-urlencode "csrf=$CSRF" "$B/portal/login"
grep -q pacsd_session "$J" || { echo "login failed" >&2; exit 1; }
STUDY=2.25.61171899517253458302.2000
sleep 5 # previews of the real study
measure() { # label path
    local i t times=()
    curl -s -b "$J" -o "$WORK/page.html" -w '%{http_code}' "$B$2" | grep -q 200 \
        || { echo "$1: not 200" >&2; exit 1; }
    for i in $(seq "$ROUNDS"); do
        times+=("$(curl -s -b "$J" -o /dev/null -w '%{time_total}' "$B$2")")
    done
    printf '%s\n' "${times[@]}" | python3 -c '
import sys, statistics
t = sorted(float(x) * 1000 for x in sys.stdin)
p95 = t[min(len(t) - 1, int(len(t) * 0.95))]
print(f"{sys.argv[1]:44} median {statistics.median(t):7.1f} ms   p95 {p95:7.1f} ms   max {t[-1]:7.1f} ms")
' "$1"
}
echo "### portal pages, 100,000 instances, $ROUNDS rounds each"
measure "login form" "/portal/login"
measure "studies, first page (newest first)" "/portal/studies"
measure "studies, oldest first" "/portal/studies?sort=oldest"
measure "studies, page 40" "/portal/studies?page=40"
measure "studies, name prefix" "/portal/studies?name=synthetic%5Epatient0012"
measure "studies, patient ID" "/portal/studies?patient_id=PAT00123"
measure "studies, date range + modality" "/portal/studies?from=2010-01-01&to=2010-03-01&modality=CT"
measure "study page (50 images, 150 copies checked)" "/portal/studies/$STUDY"
measure "study page, filled study (no objects)" "/portal/studies/2.25.61171899517253458302.1234"
measure "operations" "/portal/operations"
echo "### ZIP of the real study (50 x 128 KiB)"
curl -s -b "$J" -o "$WORK/s.zip" -w 'ZIP %{size_download} bytes in %{time_total} s\n' "$B/portal/studies/$STUDY/download"
python3 -c 'import zipfile,sys; print(len(zipfile.ZipFile(sys.argv[1]).namelist()), "entries")' "$WORK/s.zip"
