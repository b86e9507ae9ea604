# Shared helpers of the benchmark and comparison scripts (sourced, not run).
# shellcheck shell=bash

export TCP_NODELAY=1   # DCMTK tools: no Nagle delay on their sockets

# Install Debian packages that provide the given commands, if any is missing (as root).
# Usage: need CMD:PACKAGE ...
need() {
    local missing=()
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair##*:}")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

# A work directory removed on exit, with every PID in PIDS killed first. KEEP_WORK=1 leaves it
# (for runs back to back: on this project's VM, whose ext4 has no journal, creating files is
# slow for minutes after many were deleted, as ext4 skips recently deleted inodes).
# WORK_ROOT (default /tmp) chooses the file system, e.g. a fresh one for an A/B comparison
# that earlier deletions must not slow down.
# Usage: workdir NAME  (sets WORK)
workdir() {
    WORK=$(mktemp -d "${WORK_ROOT:-/tmp}/pacsd-$1.XXXXXX")
    PIDS=()
    trap 'for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; [ -n "${KEEP_WORK:-}" ] || rm -rf "$WORK"' EXIT
}

# A free TCP port on loopback.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# Write $WORK/pacsd.toml for a retrieve benchmark: pacsd on PORT with three local replicas
# under $WORK/pacsd, the storescp sink "SINK" on SINK_PORT as its only move destination, and
# any further lines (TOML sections) appended.
# Usage: pacsd_retrieve_config PORT SINK_PORT [EXTRA]
pacsd_retrieve_config() {
    cat >"$WORK/peers.toml" <<EOF
[[peer]]
ae_title = "SINK"
host = "127.0.0.1"
port = $2
EOF
    pacsd_config_file "$WORK/pacsd.toml" "$WORK/pacsd" "$1" 3 "[access]
peers_file = \"peers.toml\"
unknown_ae_services = [\"echo\", \"store\", \"move\", \"get\"]
${3:-}"
}

# A node that answers C-FIND with every match (the C-FIND comparisons).
FIND_NODE='[access]
unknown_ae_services = ["echo", "store", "find"]
[query]
max_results = 0'

# Write a node's configuration to FILE: DICOM on 127.0.0.1:PORT, its index and REPLICAS
# local replica directories (r1, r2, ...) under DIR, then EXTRA (more TOML, and a replica URL
# after the directories with EXTRA_REPLICA set).
# Usage: pacsd_config_file FILE DIR PORT REPLICAS [EXTRA]
pacsd_config_file() {
    local list="" i
    for i in $(seq 1 "$4"); do list="$list\"$2/r$i\", "; done
    if [ -n "${EXTRA_REPLICA:-}" ]; then list="$list\"$EXTRA_REPLICA\", "; fi
    cat >"$1" <<EOF
[node]
bind = "127.0.0.1"
port = $3
[index]
path = "$2/index.sqlite"
[storage]
replicas = [${list%, }]
${5:-}
EOF
}

# Wait (at most 60 s) until AET on PORT answers C-ECHO.
wait_echo() {
    for _ in $(seq 1 600); do
        echoscu -aec "$1" 127.0.0.1 "$2" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "no C-ECHO answer from $1:$2" >&2
    return 1
}

# Start a MiniDFSCluster (scripts/minidfs.sh; Java 17 and Maven) with its data under DIR and
# wait until it is up: sets HDFS_URL (hdfs://127.0.0.1:PORT) and adds the JVM to PIDS. Its
# stdin stays open on file descriptor MINIDFS_FD (echo a launcher command into it).
# Usage: start_minidfs DIR [--datanodes N]
start_minidfs() {
    local dir=$1; shift
    mkdir -p "$dir"
    rm -f "$dir/in"; mkfifo "$dir/in"
    bash scripts/minidfs.sh run --dir "$dir/data" "$@" <"$dir/in" >"$dir/out" 2>"$dir/log" &
    PIDS+=($!)
    exec {MINIDFS_FD}>"$dir/in"
    for _ in $(seq 1 900); do
        grep -q '^READY' "$dir/out" 2>/dev/null && break
        sleep 0.2
    done
    HDFS_URL=$(sed -n 's/^READY url=\([^ ]*\).*/\1/p' "$dir/out")
    if [ -z "$HDFS_URL" ]; then
        echo "MiniDFSCluster did not start:" >&2
        tail -5 "$dir/log" >&2
        return 1
    fi
}

# One pass of a workload ("$@") while perf samples process PID: prints units per second, the
# process's CPU time per unit (utime + stime) and its hottest symbols ($WORK/perf.txt).
# Usage: perf_pass PID UNITS command...
perf_pass() {
    local pid=$1 units=$2; shift 2
    local c0 c1 t0 t1 perf
    cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
    c0=$(cpu_ticks "$pid"); t0=$(date +%s.%N)
    perf record -q -F 999 -g -p "$pid" -o "$WORK/perf.data" -- sleep 600 & perf=$!
    sleep 0.5
    "$@"
    t1=$(date +%s.%N); c1=$(cpu_ticks "$pid")
    kill -INT "$perf"; wait "$perf" 2>/dev/null || true
    python3 -c "import sys; n,c,t=int(sys.argv[1]),(int(sys.argv[3])-int(sys.argv[2]))/100,float(sys.argv[5])-float(sys.argv[4]); print(f'{n/t:.0f} per s; CPU {c:.2f} s = {c/n*1000:.2f} ms per unit')" \
        "$units" "$c0" "$c1" "$t0" "$t1"
    perf report -i "$WORK/perf.data" --no-children --sort symbol --stdio >"$WORK/perf.txt" 2>/dev/null
    grep -E '^ +[0-9.]+%' "$WORK/perf.txt" | awk 'NR <= 25'   # awk reads all: no SIGPIPE
}

# One pass of a workload ("$@") while strace -c counts the system calls of process PID:
# prints the table ($WORK/strace.txt) with the calls per unit.
# Usage: strace_pass PID UNITS command...
strace_pass() {
    local pid=$1 units=$2; shift 2
    local st
    strace -c -f -p "$pid" -o "$WORK/strace.txt" & st=$!
    sleep 0.5
    "$@"
    kill -INT "$st"; wait "$st" 2>/dev/null || true
    awk -v n="$units" 'NR <= 2 { print; next } $4 ~ /^[0-9]+$/ && NF >= 5 {
        printf "%s  (%.1f per unit)\n", $0, $4 / n; next } { print }' "$WORK/strace.txt" | head -24
}
