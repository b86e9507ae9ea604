#!/usr/bin/env bash
# Fuzz everything a peer can send (tests/fuzz, cargo-fuzz + libFuzzer): data set pre-scan and
# parse, command sets, identifiers, PDUs, P-DATA reassembly, Part 10 files from storage,
# character sets, HA frames.
#
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]      (default 60 s, every target)
#        FUZZ_RUNS=N scripts/fuzz.sh 0 ...   N inputs per target with a fixed seed instead of a
#                                            time limit (reproducible: what CI runs)
# Seeds: synthetic objects from `pacsd synth` and, when pydicom is installed, its test files.
# Crashes land in tests/fuzz/artifacts/<target>/; copy each into
# tests/fuzz/regressions/<target>/ once fixed (tests/fuzz_regressions.rs replays them).
# Prints, per target, executions, coverage (libFuzzer's cov/ft) and crashes found.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${1:-60}
shift || true
TARGETS=("$@")
[ "${#TARGETS[@]}" -gt 0 ] || TARGETS=(dataset command identifier pdu pdata part10 charset ha_frame)

command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --version 0.13.2 --locked --quiet
# The nightly toolchain when there is one; otherwise stable, allowed its -Z flags.
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    FUZZ=(cargo +nightly fuzz)
else
    export RUSTC_BOOTSTRAP=1
    FUZZ=(cargo fuzz)
fi
"${FUZZ[@]}" build --fuzz-dir tests/fuzz -O >/dev/null

# Seed corpora (not committed): synthetic CT objects and pydicom's files.
SEEDS=tests/fuzz/corpus
mkdir -p "$SEEDS"/{dataset,part10,command,identifier,pdu,pdata,charset,ha_frame}
if [ ! -e "$SEEDS/.seeded" ]; then
    # (PACSD_FEATURES: the features the caller builds pacsd with, so the binary is shared)
    cargo run --release --quiet ${PACSD_FEATURES:+--features "$PACSD_FEATURES"} -- \
        synth -o "$SEEDS/synth" --studies 2 --per-study 3 >/dev/null
    pydicom_data=$(python3 -c 'import os, pydicom; print(os.path.dirname(pydicom.__file__) + "/data")' 2>/dev/null || true)
    i=0
    while IFS= read -r f; do
        i=$((i + 1))
        cp "$f" "$SEEDS/part10/seed-$i"
        # Data set seeds: the Part 10 file less its 128-byte preamble and meta group is close
        # enough; libFuzzer's mutations find the boundary. First byte picks the syntax.
        { printf '\x01'; tail -c +133 "$f"; } > "$SEEDS/dataset/seed-$i"
    done < <(find "$SEEDS/synth" ${pydicom_data:+"$pydicom_data/test_files"} -type f -name '*.dcm' | head -200)
    rm -rf "$SEEDS/synth"
    touch "$SEEDS/.seeded"
fi

status=0
for t in "${TARGETS[@]}"; do
    log=$(mktemp)
    if [ -n "${FUZZ_RUNS:-}" ]; then
        limit=(-runs="$FUZZ_RUNS" -seed=1)
    else
        limit=(-max_total_time="$SECS")
    fi
    if "${FUZZ[@]}" run --fuzz-dir tests/fuzz -O "$t" "$SEEDS/$t" -- \
        "${limit[@]}" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
        result=ok
    else
        result=CRASH
        status=1
    fi
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
    cov=$(grep -Eo 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -1 || echo 'cov: ?')
    printf '%-11s %-5s %10s execs  %s\n' "$t" "$result" "$execs" "$cov"
    [ "$result" = ok ] || grep -E 'panicked|ERROR|SUMMARY|Test unit written' "$log" | head -8
    rm -f "$log"
done
exit $status
