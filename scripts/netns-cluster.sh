#!/usr/bin/env bash
# A local multi-host cluster: N network namespaces ("hosts") joined by veth pairs to a
# bridge on a private subnet, a JobManager on host 0 and a TaskManager on each other
# host. Needs root and iproute2.
#
#   scripts/netns-cluster.sh up N [PREFIX]     create hosts PREFIX0..PREFIX(N-1)
#   scripts/netns-cluster.sh start BIN [PREFIX] [-D key=value ...]
#                                               JobManager on host 0, TaskManagers on the rest
#   scripts/netns-cluster.sh exec I CMD... [PREFIX via NETNS_PREFIX]
#   scripts/netns-cluster.sh down [PREFIX]     stop everything, remove hosts and bridge
#
# Host i has address 10.77.<net>.(i+1)/24; the root namespace is 10.77.<net>.254 on the
# bridge, so the REST API of host 0 is reachable from outside at 10.77.<net>.1:8081.
# <net> is derived from PREFIX so that several clusters can coexist.
set -euo pipefail

cmd=${1:-}
shift || true

net_of() { # a stable /24 per prefix
  local sum
  sum=$(printf '%s' "$1" | cksum | cut -d' ' -f1)
  echo $(( sum % 200 + 20 ))
}

rundir() { echo "/tmp/spate-netns-$1"; }

case "$cmd" in
  up)
    n=${1:?usage: up N [PREFIX]}
    prefix=${2:-spate-h}
    net=$(net_of "$prefix")
    br="${prefix:0:8}br"
    mkdir -p "$(rundir "$prefix")"
    ip link add "$br" type bridge
    ip addr add "10.77.$net.254/24" dev "$br"
    ip link set "$br" up
    for i in $(seq 0 $((n - 1))); do
      ns="$prefix$i"
      ip netns add "$ns"
      ip link add "${prefix:0:8}v$i" type veth peer name eth0 netns "$ns"
      ip link set "${prefix:0:8}v$i" master "$br" up
      ip -n "$ns" addr add "10.77.$net.$((i + 1))/24" dev eth0
      ip -n "$ns" link set eth0 up
      ip -n "$ns" link set lo up
    done
    echo "hosts ${prefix}0..${prefix}$((n - 1)) on 10.77.$net.0/24"
    ;;
  start)
    bin=${1:?usage: start BIN [PREFIX] [-D key=value ...]}
    prefix=${2:-spate-h}
    shift 2 || shift $#
    net=$(net_of "$prefix")
    dir=$(rundir "$prefix")
    mkdir -p "$dir"
    hosts=$(ip netns list | awk '{print $1}' | grep "^$prefix[0-9]*$" | sort -V)
    jm="10.77.$net.1"
    for ns in $hosts; do
      i=${ns#"$prefix"}
      addr="10.77.$net.$((i + 1))"
      common=(-D "jobmanager.rpc.address=$jm" -D "taskmanager.host=$addr" "$@")
      if [ "$i" = 0 ]; then
        ip netns exec "$ns" "$bin" jobmanager "${common[@]}" >"$dir/$ns.log" 2>&1 &
      else
        ip netns exec "$ns" "$bin" taskmanager "${common[@]}" >"$dir/$ns.log" 2>&1 &
      fi
      echo $! >"$dir/$ns.pid"
    done
    echo "JobManager on $jm (REST: http://$jm:8081 unless rest.port is set); logs in $dir"
    ;;
  exec)
    i=${1:?usage: exec I CMD...}
    shift
    exec ip netns exec "${NETNS_PREFIX:-spate-h}$i" "$@"
    ;;
  down)
    prefix=${1:-spate-h}
    dir=$(rundir "$prefix")
    if [ -d "$dir" ]; then
      for f in "$dir"/*.pid; do
        [ -e "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
      done
      sleep 0.2
      for f in "$dir"/*.pid; do
        [ -e "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null || true
      done
      rm -rf "$dir"
    fi
    for ns in $(ip netns list | awk '{print $1}' | grep "^$prefix[0-9]*$" || true); do
      ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
      ip netns del "$ns"
    done
    for link in $(ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | grep "^${prefix:0:8}v[0-9]*$" || true); do
      ip link del "$link" 2>/dev/null || true
    done
    ip link del "${prefix:0:8}br" 2>/dev/null || true
    ;;
  *)
    sed -n '2,16p' "$0"
    exit 2
    ;;
esac
