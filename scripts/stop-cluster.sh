#!/usr/bin/env bash
# Stops what start-cluster.sh started: every TaskManager of $SPATE_CONF_DIR/workers,
# then every JobManager of $SPATE_CONF_DIR/masters.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/cluster-hosts.sh"
# Each host once: stop-all ends every instance it runs.
# A host that cannot be reached does not keep the others running.
failed=0
while read -r host; do
  on_host "$host" taskmanager.sh stop-all || { echo "could not stop the TaskManagers on $host" >&2; failed=1; }
done < <(workers | sort -u)
while read -r host _; do
  on_host "$host" jobmanager.sh stop-all || { echo "could not stop the JobManager on $host" >&2; failed=1; }
done < <(masters | sort -u)
exit $failed
