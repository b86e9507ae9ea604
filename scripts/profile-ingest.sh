#!/usr/bin/env bash
# Where a C-STORE's time goes in pacsd, with the default three local replicas and previews on:
# DCMTK storescu sends the corpus over one association while `perf record` samples pacsd (call
# graphs); a second corpus is sent while `strace -c -f` counts its system calls (the flushes
# of the durability contract among them). Prints the hottest symbols, the syscall table with
# calls per C-STORE, and pacsd's CPU time per instance.
#
# Usage: scripts/profile-ingest.sh [INSTANCES]   (default 500 CT-like 512x512 images)
# Needs: dcmtk, perf, strace.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
N=${1:-500}
need storescu:dcmtk perf:linux-perf strace:strace
cargo build --release --quiet
PACSD=$PWD/target/release/pacsd
workdir profile-ingest
export TCP_NODELAY=1

$PACSD synth -o "$WORK/perf-corpus" --studies 1 --per-study "$N" --size 512 --first-study 4000 | tail -1
$PACSD synth -o "$WORK/strace-corpus" --studies 1 --per-study "$N" --size 512 --first-study 4001 | tail -1
PP=$(free_port)
pacsd_retrieve_config "$PP" "$(free_port)" "$(printf '[http]\nenabled = false')"
RUST_LOG=pacsd=warn $PACSD serve -c "$WORK/pacsd.toml" >"$WORK/pacsd.log" 2>&1 & PIDS+=($!)
PID=$!
wait_echo PACSD "$PP"
cpu() { awk '{print $14 + $15}' "/proc/$PID/stat"; }   # utime + stime, in clock ticks
send() { storescu -aec PACSD +sd +r 127.0.0.1 "$PP" "$1" >>"$WORK/store.log" 2>&1; }

echo "== perf: $N instances stored (1 association)"
c0=$(cpu); t0=$(date +%s.%N)
perf record -q -F 999 -g -p "$PID" -o "$WORK/perf.data" -- sleep 600 & PERF=$!
sleep 0.5
send "$WORK/perf-corpus"
t1=$(date +%s.%N); c1=$(cpu)
kill -INT "$PERF"; wait "$PERF" 2>/dev/null || true
python3 -c "import sys; n,c,t=int(sys.argv[1]),(int(sys.argv[3])-int(sys.argv[2]))/100,float(sys.argv[5])-float(sys.argv[4]); print(f'{n/t:.0f} inst/s; pacsd CPU {c:.2f} s = {c/n*1000:.2f} ms per instance')" \
    "$N" "$c0" "$c1" "$t0" "$t1"
perf report -i "$WORK/perf.data" --no-children --sort symbol --stdio >"$WORK/perf.txt" 2>/dev/null
grep -E '^ +[0-9.]+%' "$WORK/perf.txt" | awk 'NR <= 25'   # awk reads all: no SIGPIPE

echo "== strace -c: system calls of pacsd while $N more are stored"
strace -c -f -p "$PID" -o "$WORK/strace.txt" & ST=$!
sleep 0.5
send "$WORK/strace-corpus"
sleep 1   # previews of the last instances
kill -INT "$ST"; wait "$ST" 2>/dev/null || true
awk -v n="$N" 'NR <= 2 { print; next } $4 ~ /^[0-9]+$/ && NF >= 5 {
    printf "%s  (%.1f per C-STORE)\n", $0, $4 / n; next } { print }' "$WORK/strace.txt" | head -24
