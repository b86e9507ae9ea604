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

# A work directory removed on exit, with every PID in PIDS killed first.
# Usage: workdir NAME  (sets WORK)
workdir() {
    WORK=$(mktemp -d "/tmp/pacsd-$1.XXXXXX")
    PIDS=()
    trap 'for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
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
    cat >"$WORK/pacsd.toml" <<EOF
[node]
bind = "127.0.0.1"
port = $1
[index]
path = "$WORK/pacsd/index.sqlite"
[storage]
replicas = ["$WORK/pacsd/r1", "$WORK/pacsd/r2", "$WORK/pacsd/r3"]
[access]
peers_file = "peers.toml"
unknown_ae_services = ["echo", "store", "move", "get"]
${3:-}
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
