#!/usr/bin/env bash
# A real S3-compatible cluster on loopback for pacsd's storage tests and benchmarks: three Garage
# nodes (replication_factor = 3) joined into one layout, one access key, and one bucket per pacsd
# replica (pacs-1, pacs-2, pacs-3), each replica reached through a different node's S3 endpoint,
# so that killing node N takes pacsd's replica N away.
#
#   scripts/s3-cluster.sh start DIR [BASE_PORT] [--independent]
#                                                 start the cluster; writes DIR/env (source it)
#   scripts/s3-cluster.sh stop DIR                stop every node and remove DIR
#   scripts/s3-cluster.sh kill N DIR              kill -9 node N (1..3)
#   scripts/s3-cluster.sh stop-node N DIR         SIGSTOP node N (frozen, connections stay open)
#   scripts/s3-cluster.sh cont-node N DIR         SIGCONT node N
#   scripts/s3-cluster.sh restart N DIR           start node N again after a kill
#
# With --independent the three nodes are instead three single-node Garage servers
# (replication_factor = 1), one per site, pacsd doing the replication: a node's failure then
# touches only its own replica. (In one replicated cluster, a killed or frozen node also stalls
# requests served by the others while Garage notices; the fault tests of striped reads use
# independent sites so that they test pacsd's routing, not Garage's failure detection.)
#
# Ports are BASE+10N (S3), +1 (RPC), +3 (admin): keep BASE below the kernel's ephemeral range
# (32768 and up here), or a client's outgoing connection can hold a port a node needs.
#
# DIR/env exports AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ALLOW_HTTP and
# PACSD_S3_REPLICAS (three replica URLs, space separated). Needs `garage` on PATH
# (`cargo install garage --locked`, about 10 minutes). Only 127.0.0.1 is used.
set -euo pipefail

GARAGE=${GARAGE:-garage}
KEY_ID=GK5ac0ffee00000000deadbeef
SECRET=5ecre7000000000000000000000000000000000000000000000000000000cafe

die() { echo "s3-cluster: $*" >&2; exit 1; }

port() { # port KIND N: s3=BASE+10N, rpc=BASE+10N+1, admin=BASE+10N+3
    local base; base=$(cat "$DIR/base_port")
    case $1 in s3) echo $((base + 10 * $2)) ;; rpc) echo $((base + 10 * $2 + 1)) ;; admin) echo $((base + 10 * $2 + 3)) ;; esac
}

g() { # g N ARGS...: garage CLI against node N
    local n=$1; shift
    "$GARAGE" -c "$DIR/node$n.toml" "$@"
}

start_node() {
    local n=$1
    "$GARAGE" -c "$DIR/node$n.toml" server >>"$DIR/node$n.log" 2>&1 &
    echo $! >"$DIR/node$n.pid"
}

wait_for() { # wait_for SECONDS CMD...
    local deadline=$((SECONDS + $1)); shift
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.1
    done
}

s3_up() { # s3_up N [FROM_LINE]: node N's log, after line FROM_LINE, says its S3 API listens
    # (the log, not a connect: whoever else holds the port would answer a connect too)
    tail -n +"$((${2:-0} + 1))" "$DIR/node$1.log" | grep -q "S3 API server listening"
}

ports_taken() { # ports_taken N [FROM_LINE]: die if node N could not bind one of its ports
    if tail -n +"$((${2:-0} + 1))" "$DIR/node$1.log" | grep -q "Address already in use"; then
        die "node $1: a port of it is taken by another process (see $DIR/node$1.log)"
    fi
}

cmd=${1:-}; shift || true
case $cmd in
start)
    DIR=${1:?usage: start DIR [BASE_PORT]}
    BASE=${2:-29000}
    MODE=${3:-cluster}
    [[ $MODE == cluster || $MODE == --independent ]] || die "unknown option $MODE"
    command -v "$GARAGE" >/dev/null || die "garage not found: cargo install garage --locked"
    mkdir -p "$DIR"
    DIR=$(cd "$DIR" && pwd)
    echo "$BASE" >"$DIR/base_port"
    secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
    for n in 1 2 3; do
        mkdir -p "$DIR/node$n/meta" "$DIR/node$n/data"
        cat >"$DIR/node$n.toml" <<EOF
metadata_dir = "$DIR/node$n/meta"
data_dir = "$DIR/node$n/data"
db_engine = "sqlite"
replication_factor = $([[ $MODE == cluster ]] && echo 3 || echo 1)
rpc_bind_addr = "127.0.0.1:$(port rpc $n)"
rpc_public_addr = "127.0.0.1:$(port rpc $n)"
rpc_secret = "$secret"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$(port s3 $n)"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$(port admin $n)"
EOF
        start_node $n
    done
    for n in 1 2 3; do
        wait_for 60 g $n node id -q || die "node $n did not start (see $DIR/node$n.log)"
    done
    if [[ $MODE == cluster ]]; then
        for n in 2 3; do
            g 1 node connect "$(g $n node id -q 2>/dev/null)" >/dev/null
        done
        for n in 1 2 3; do
            id=$(g $n node id -q 2>/dev/null)
            g 1 layout assign -z "dc$n" -c 1G "${id%@*}" >/dev/null
        done
        g 1 layout apply --version 1 >/dev/null
        wait_for 30 g 1 key import --yes -n pacsd "$KEY_ID" "$SECRET" || die "key import failed"
        for n in 1 2 3; do
            g 1 bucket create "pacs-$n" >/dev/null
            g 1 bucket allow --read --write --owner "pacs-$n" --key pacsd >/dev/null
        done
    else
        for n in 1 2 3; do
            id=$(g $n node id -q 2>/dev/null)
            g $n layout assign -z "dc$n" -c 1G "${id%@*}" >/dev/null
            g $n layout apply --version 1 >/dev/null
            wait_for 30 g $n key import --yes -n pacsd "$KEY_ID" "$SECRET" || die "key import failed on node $n"
            g $n bucket create "pacs-$n" >/dev/null
            g $n bucket allow --read --write --owner "pacs-$n" --key pacsd >/dev/null
        done
    fi
    for n in 1 2 3; do
        wait_for 60 s3_up $n || { ports_taken $n; die "S3 API of node $n not listening"; }
        ports_taken $n
    done
    replicas=""
    for n in 1 2 3; do
        replicas+="s3://pacs-$n/dicom?endpoint=http://127.0.0.1:$(port s3 $n) "
    done
    cat >"$DIR/env" <<EOF
export AWS_ACCESS_KEY_ID=$KEY_ID
export AWS_SECRET_ACCESS_KEY=$SECRET
export AWS_REGION=garage
export AWS_ALLOW_HTTP=true
export PACSD_S3_REPLICAS="${replicas% }"
EOF
    echo "s3-cluster: 3 Garage nodes up in $DIR (S3 on 127.0.0.1:$(port s3 1),$(port s3 2),$(port s3 3)); source $DIR/env"
    ;;
stop)
    DIR=${1:?usage: stop DIR}
    for n in 1 2 3; do
        if [[ -f $DIR/node$n.pid ]]; then
            pid=$(cat "$DIR/node$n.pid")
            kill -CONT "$pid" 2>/dev/null || true
            kill -9 "$pid" 2>/dev/null || true
        fi
    done
    rm -rf "$DIR"
    ;;
kill)
    n=${1:?usage: kill N DIR}; DIR=${2:?usage: kill N DIR}
    kill -9 "$(cat "$DIR/node$n.pid")"
    ;;
stop-node)
    n=${1:?}; DIR=${2:?}
    kill -STOP "$(cat "$DIR/node$n.pid")"
    ;;
cont-node)
    n=${1:?}; DIR=${2:?}
    kill -CONT "$(cat "$DIR/node$n.pid")"
    ;;
restart)
    n=${1:?usage: restart N DIR}; DIR=${2:?usage: restart N DIR}
    from=$(wc -l <"$DIR/node$n.log")
    start_node "$n"
    wait_for 60 s3_up "$n" "$from" || die "node $n did not come back (see $DIR/node$n.log)"
    ports_taken "$n" "$from"
    ;;
*)
    sed -n '2,24p' "$0" >&2
    exit 2
    ;;
esac
