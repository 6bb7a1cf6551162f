#!/usr/bin/env bash
# W1 at parallelism 2 on two TaskManagers of this machine (one slot each, pinned to
# cores 0 and 1, the network agent polled by the slot): records between them through
# shared memory (same-host shm) and through the network agents (same-host tcp),
# alternated ROUNDS times. Prints events/s from the wall time of `spate run -m`.
#
#   bash bench/w1-between-taskmanagers.sh [EVENTS] [ROUNDS]      (needs curl)
set -euo pipefail
events=${1:-20000000}
rounds=${2:-2}
cd "$(dirname "$0")/.."
cargo build --release -q -p spate
bin=target/release/spate
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq "$rounds"); do
  for mode in shm tcp; do
    d=(-D jobmanager.rpc.address=127.0.0.1 -D jobmanager.rpc.port=16123 -D rest.port=18081
       -D taskmanager.numberOfTaskSlots=1 -D taskmanager.idle-strategy=backoff
       -D taskmanager.network.same-host=$mode -D taskmanager.network.agent=shared
       -D heartbeat.interval=100ms -D heartbeat.timeout=2s)
    $bin jobmanager "${d[@]}" >/dev/null 2>&1 & pids=($!)
    sleep 0.3
    $bin taskmanager "${d[@]}" -D "taskmanager.cpu.cores=[0]" >/dev/null 2>&1 & pids+=($!)
    $bin taskmanager "${d[@]}" -D "taskmanager.cpu.cores=[1]" >/dev/null 2>&1 & pids+=($!)
    for _ in $(seq 50); do
      n=$(curl -s 127.0.0.1:18081/taskmanagers | grep -o '"dataAddress"' | wc -l || true)
      [ "$n" = 2 ] && break
      sleep 0.1
    done
    s=$(date +%s.%N)
    $bin run -m 127.0.0.1:18081 -p 2 --events "$events" vwap >/dev/null 2>&1
    e=$(date +%s.%N)
    frames=$(curl -s 127.0.0.1:18081/taskmanagers | grep -o '"framesOut":[0-9]*' | cut -d: -f2 |
      awk '{t += $1} END {print t + 0}')
    awk -v m="$mode" -v n="$events" -v s="$s" -v e="$e" -v f="$frames" \
      'BEGIN {printf "%s: %.2f M events/s (%.2f s), frames over the network: %s\n", m, n / (e - s) / 1e6, e - s, f}'
    cleanup
    pids=()
  done
done
