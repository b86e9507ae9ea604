#!/usr/bin/env bash
# Where a C-STORE's time goes in pacsd, with the default three local replicas and previews on:
# DCMTK storescu sends the corpus over one association while `perf record` samples pacsd (call
# graphs); a second corpus is sent while `strace -c -f` counts its system calls (the flushes
# of the durability contract among them). Prints the hottest symbols, the syscall table with
# calls per C-STORE, and pacsd's CPU time per instance.
#
# Usage: scripts/profile-ingest.sh [INSTANCES] [SIZE]   (default 500 CT-like 512x512 images;
#        SIZE 64 gives the benchmark's small objects)
# Needs: dcmtk, perf, strace.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
N=${1:-500}
SIZE=${2:-512}
need storescu:dcmtk perf:linux-perf strace:strace
cargo build --release --quiet
PACSD=$PWD/target/release/pacsd
workdir profile-ingest
export TCP_NODELAY=1

$PACSD synth -o "$WORK/perf-corpus" --studies 1 --per-study "$N" --size "$SIZE" --first-study 4000 | tail -1
$PACSD synth -o "$WORK/strace-corpus" --studies 1 --per-study "$N" --size "$SIZE" --first-study 4001 | tail -1
PP=$(free_port)
pacsd_retrieve_config "$PP" "$(free_port)" "$(printf '[http]\nenabled = false')"
RUST_LOG=pacsd=warn $PACSD serve -c "$WORK/pacsd.toml" >"$WORK/pacsd.log" 2>&1 & PIDS+=($!)
PID=$!
wait_echo PACSD "$PP"
send() { storescu -aec PACSD +sd +r 127.0.0.1 "$PP" "$1" >>"$WORK/store.log" 2>&1; }
# The last previews are rendered after the last C-STORE is answered.
send_and_settle() { send "$1"; sleep 1; }

echo "== perf: $N instances stored (1 association; units: C-STOREs)"
perf_pass "$PID" "$N" send "$WORK/perf-corpus"
echo "== strace -c: system calls of pacsd while $N more are stored"
strace_pass "$PID" "$N" send_and_settle "$WORK/strace-corpus"
