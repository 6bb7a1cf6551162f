#!/usr/bin/env bash
# Starts a cluster as Flink's start-cluster.sh does: a JobManager on each host of
# $SPATE_CONF_DIR/masters (host:rest-port per line) and a TaskManager on each line of
# $SPATE_CONF_DIR/workers (a host listed twice runs two). Hosts that name this machine
# (localhost, 127.x, its hostname) start here; others over ssh ($SPATE_SSH_OPTS), where
# SPATE_HOME must be the same path with the same build. Extra arguments (e.g. -D
# key=value) go to every process.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/cluster-hosts.sh"
# Each JobManager binds the address its line names (several, with high availability,
# elect a leader); each TaskManager announces the address its line names to its peers.
while read -r host port; do
  args=()
  [ -n "$port" ] && args=(-D "rest.port=$port")
  is_local "$host" || args+=(-D "jobmanager.rpc.address=$host")
  on_host "$host" jobmanager.sh start ${args[@]+"${args[@]}"} "$@"
done < <(masters)
while read -r host; do
  args=()
  is_local "$host" || args=(-D "taskmanager.host=$host")
  on_host "$host" taskmanager.sh start ${args[@]+"${args[@]}"} "$@"
done < <(workers)
