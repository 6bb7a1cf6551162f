#!/usr/bin/env bash
# Stops what start-cluster.sh started: every TaskManager of $SPATE_CONF_DIR/workers,
# then every JobManager of $SPATE_CONF_DIR/masters.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/cluster-hosts.sh"
# Each host once: stop-all ends every instance it runs.
while read -r host; do
  on_host "$host" taskmanager.sh stop-all
done < <(workers | sort -u)
while read -r host _; do
  on_host "$host" jobmanager.sh stop-all
done < <(masters | sort -u)
