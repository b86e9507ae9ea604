#!/usr/bin/env bash
# Where a C-MOVE's time goes in pacsd: the corpus is loaded into pacsd (3 local replicas), then
# one study after another is moved to a DCMTK storescp sink while `perf record` samples pacsd
# (call graphs) and, in a second pass, `strace -c -f` counts its system calls. Prints the
# hottest symbols, the syscall table and the per-instance CPU time of pacsd during the moves.
#
# Usage: [DISCARD=1] scripts/profile-retrieve.sh [INSTANCES]   (default 1000 CT-like 512x512
# images; with DISCARD=1 the sink receives and discards, `--ignore`, as in bench-retrieve.sh)
# Needs: dcmtk, perf, strace.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
N=${1:-1000}
STUDIES=4
need storescu:dcmtk perf:linux-perf strace:strace
cargo build --release --quiet
PACSD=$PWD/target/release/pacsd
workdir profile-retrieve
R=2.25.61171899517253458302

$PACSD synth -o "$WORK/corpus" --studies $STUDIES --per-study $((N / STUDIES)) --size 512 --first-study 3000 | tail -1
SINK_PORT=$(free_port); PP=$(free_port)
pacsd_retrieve_config "$PP" "$SINK_PORT" "$(printf '[preview]\nenabled = false\n[http]\nenabled = false')"
RUST_LOG=pacsd=warn $PACSD serve -c "$WORK/pacsd.toml" >"$WORK/pacsd.log" 2>&1 & PIDS+=($!)
PID=$!
wait_echo PACSD "$PP"
storescu -aec PACSD +sd +r 127.0.0.1 "$PP" "$WORK/corpus" >"$WORK/load.log" 2>&1
SINK_OPTS=(); [ "${DISCARD:-0}" = 1 ] && SINK_OPTS=(--ignore)
storescp -aet SINK --max-pdu 131072 "${SINK_OPTS[@]}" -od "$WORK/sink" "$SINK_PORT" >"$WORK/sink.log" 2>&1 & PIDS+=($!)
mkdir -p "$WORK/sink"
wait_echo SINK "$SINK_PORT"

move_all() {
    for s in $(seq 3000 $((3000 + STUDIES - 1))); do
        movescu -S -aec PACSD -aem SINK -k QueryRetrieveLevel=STUDY -k "StudyInstanceUID=$R.$s" \
            127.0.0.1 "$PP" >>"$WORK/move.log" 2>&1
    done
}
move_all   # warm the page cache
echo "== perf: $N instances moved (units: instances)"
perf_pass "$PID" "$N" move_all
echo "== strace -c: system calls of pacsd during one more pass"
strace_pass "$PID" "$N" move_all
