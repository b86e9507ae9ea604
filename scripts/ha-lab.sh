#!/usr/bin/env bash
# The HA lab: network namespaces on this machine for two pacsd nodes, a witness and a client,
# joined by a bridge that lives in a namespace of its own. Every address is inside these
# namespaces (10.77.0.0/24); nothing is routed anywhere else.
#
#   scripts/ha-lab.sh up LAB        create LAB-a (10.77.0.2), LAB-b (.3), LAB-w (.4),
#                                   LAB-c (.10) and LAB-br (the bridge); eth0 in each
#   scripts/ha-lab.sh down LAB      delete them all
#   scripts/ha-lab.sh isolate LAB on|off
#                                   cut (or restore) a <-> b while both still reach c and w
#                                   (bridge port isolation)
#   scripts/ha-lab.sh exec LAB HOST CMD...   run CMD in LAB-HOST
#
# The service IP used by the tests is 10.77.0.100/24 on eth0. LAB must be short (at most 6
# characters: interface names are limited to 15). Needs root and iproute2.
set -euo pipefail

die() { echo "ha-lab: $*" >&2; exit 1; }
[[ $(id -u) == 0 ]] || die "must run as root (network namespaces)"
command -v ip >/dev/null || die "ip (iproute2) not found"

declare -A ADDR=([a]=10.77.0.2 [b]=10.77.0.3 [w]=10.77.0.4 [c]=10.77.0.10)

cmd=${1:-}; LAB=${2:-}
[[ -n $LAB && ${#LAB} -le 6 ]] || die "usage: $0 up|down|isolate|exec LAB ... (LAB: 1-6 characters)"

case $cmd in
up)
    ip netns add "$LAB-br"
    ip -n "$LAB-br" link set lo up
    ip -n "$LAB-br" link add br0 type bridge
    ip -n "$LAB-br" link set br0 up
    for h in a b w c; do
        ns="$LAB-$h"
        ip netns add "$ns"
        ip -n "$ns" link set lo up
        ip link add "v$LAB$h" type veth peer name "p$LAB$h"
        ip link set "v$LAB$h" netns "$ns"
        ip -n "$ns" link set "v$LAB$h" name eth0
        ip -n "$ns" addr add "${ADDR[$h]}/24" dev eth0
        ip -n "$ns" link set eth0 up
        ip link set "p$LAB$h" netns "$LAB-br"
        ip -n "$LAB-br" link set "p$LAB$h" master br0
        ip -n "$LAB-br" link set "p$LAB$h" up
    done
    ;;
down)
    for h in a b w c br; do
        ip netns pids "$LAB-$h" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
        ip netns del "$LAB-$h" 2>/dev/null || true
    done
    ;;
isolate)
    state=${3:-on}
    [[ $state == on || $state == off ]] || die "isolate LAB on|off"
    for h in a b; do
        ip netns exec "$LAB-br" bridge link set dev "p$LAB$h" isolated "$state"
    done
    ;;
exec)
    h=${3:?host}; shift 3
    exec ip netns exec "$LAB-$h" "$@"
    ;;
*)
    sed -n '2,17p' "$0" >&2
    exit 2
    ;;
esac
