#!/usr/bin/env bash
# Runs one spate process in the background, as Flink's flink-daemon.sh does:
#   spate-daemon.sh (start|stop|status|stop-all) (jobmanager|taskmanager) [spate options]
# start  launches `spate ROLE [options]` with its output in
#        $SPATE_LOG_DIR/spate-$USER-ROLE-N-$HOST.log and its pid in
#        $SPATE_PID_DIR/spate-$USER-ROLE.pid (one line per instance; N counts them);
# stop   stops the newest instance (SIGTERM, then SIGKILL after $SPATE_STOP_TIMEOUT s);
# stop-all stops every instance; status lists the live ones.
# Environment: SPATE_HOME (default: the repository this script is in), SPATE_BIN
# (default: $SPATE_HOME/target/release/spate, else `spate` on PATH), SPATE_CONF_DIR
# (default: $SPATE_HOME/conf), SPATE_LOG_DIR ($SPATE_HOME/log), SPATE_PID_DIR (/tmp).
set -euo pipefail

usage() { echo "usage: $0 (start|stop|stop-all|status) (jobmanager|taskmanager) [spate options]" >&2; exit 2; }
[ $# -ge 2 ] || usage
op=$1 role=$2
shift 2
case "$role" in jobmanager|taskmanager) ;; *) usage ;; esac

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SPATE_HOME=${SPATE_HOME:-$(dirname "$here")}
SPATE_CONF_DIR=${SPATE_CONF_DIR:-$SPATE_HOME/conf}
SPATE_LOG_DIR=${SPATE_LOG_DIR:-$SPATE_HOME/log}
SPATE_PID_DIR=${SPATE_PID_DIR:-/tmp}
SPATE_STOP_TIMEOUT=${SPATE_STOP_TIMEOUT:-10}
if [ -z "${SPATE_BIN:-}" ]; then
  if [ -x "$SPATE_HOME/target/release/spate" ]; then SPATE_BIN=$SPATE_HOME/target/release/spate
  else SPATE_BIN=$(command -v spate || true); fi
fi
user=${USER:-$(id -un)}
pidfile=$SPATE_PID_DIR/spate-$user-$role.pid

# A pid is ours when it is alive and runs `BINARY ROLE ...` (the spate binary, or an
# application binary, with the role as its command): a pid the kernel gave to another
# program since is not, and is never signalled.
alive() {
  { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; } || return 1
  local command
  if [ -r "/proc/$1/cmdline" ]; then command=$(tr '\0' '\n' < "/proc/$1/cmdline" | sed -n 2p)
  else command=$(ps -p "$1" -o args= 2>/dev/null | awk '{print $2}'); fi
  [ "$command" = "$role" ]
}

# Keeps only the pids of live processes in the pid file.
prune() {
  [ -f "$pidfile" ] || return 0
  local live=() p
  while read -r p; do alive "$p" && live+=("$p"); done < "$pidfile"
  if [ ${#live[@]} -eq 0 ]; then rm -f "$pidfile"; else printf '%s\n' "${live[@]}" > "$pidfile"; fi
}

stop_pid() {
  local p=$1 waited=0
  if ! alive "$p"; then
    if [ -n "$p" ] && kill -0 "$p" 2>/dev/null; then
      echo "pid $p in $pidfile is no longer a spate $role (the pid was reused); not signalled" >&2
    fi
    return 0
  fi
  kill -TERM "$p" 2>/dev/null || return 0
  while alive "$p" && [ "$waited" -lt $((SPATE_STOP_TIMEOUT * 10)) ]; do sleep 0.1; waited=$((waited + 1)); done
  if alive "$p"; then
    echo "$role (pid $p) did not stop within ${SPATE_STOP_TIMEOUT}s; killing it" >&2
    kill -KILL "$p" 2>/dev/null || true
  fi
  echo "stopped $role (pid $p) on $(hostname)"
}

case "$op" in
  start)
    if [ -z "$SPATE_BIN" ] || [ ! -x "$SPATE_BIN" ]; then
      echo "no spate binary: build it (cargo build --release) or set SPATE_BIN" >&2; exit 1
    fi
    mkdir -p "$SPATE_LOG_DIR" "$SPATE_PID_DIR"
    prune
    n=$( [ -f "$pidfile" ] && wc -l < "$pidfile" || echo 0 )
    log=$SPATE_LOG_DIR/spate-$user-$role-$n-$(hostname).log
    nohup "$SPATE_BIN" "$role" --config-dir "$SPATE_CONF_DIR" "$@" >> "$log" 2>&1 < /dev/null &
    pid=$!
    echo "$pid" >> "$pidfile"
    sleep 0.3
    if ! alive "$pid"; then
      prune
      echo "$role did not start on $(hostname); its log, $log, ends with:" >&2
      tail -n 20 "$log" >&2
      exit 1
    fi
    echo "started $role (pid $pid) on $(hostname), log $log"
    ;;
  stop)
    prune
    [ -f "$pidfile" ] || { echo "no $role to stop on $(hostname)"; exit 0; }
    p=$(tail -n 1 "$pidfile")
    stop_pid "$p"
    prune
    ;;
  stop-all)
    prune
    [ -f "$pidfile" ] || { echo "no $role to stop on $(hostname)"; exit 0; }
    while read -r p; do stop_pid "$p"; done < <(tac "$pidfile")
    prune
    ;;
  status)
    prune
    if [ -f "$pidfile" ]; then
      while read -r p; do echo "$role running (pid $p) on $(hostname)"; done < "$pidfile"
    else
      echo "no $role running on $(hostname)"; exit 3
    fi
    ;;
  *) usage ;;
esac
