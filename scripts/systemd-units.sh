#!/usr/bin/env bash
# Writes systemd units for a JobManager and a TaskManager of this host into OUTDIR
# (default: ./systemd), then says how to install them:
#   scripts/systemd-units.sh [OUTDIR]
# The TaskManager's CPUAffinity= is taskmanager.cpu.cores of $SPATE_CONF_DIR/config.yaml
# plus $SPATE_CONTROL_CORES (default: the lowest core that is not a slot core), where
# its control and network threads run; the JobManager's is $SPATE_CONTROL_CORES. Both
# restart on failure (a TaskManager exits with 70 when a cancelled task does not stop).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SPATE_HOME=${SPATE_HOME:-$(dirname "$here")}
SPATE_CONF_DIR=${SPATE_CONF_DIR:-$SPATE_HOME/conf}
SPATE_BIN=${SPATE_BIN:-$SPATE_HOME/target/release/spate}
out=${1:-systemd}
conf=$SPATE_CONF_DIR/config.yaml
. "$here/slot-cores.sh"
slots=$(slot_cores "$conf" | tr , ' ')
ncpu=$(nproc --all)
if [ -z "${SPATE_CONTROL_CORES:-}" ]; then
  SPATE_CONTROL_CORES=""
  for ((c = 0; c < ncpu; c++)); do
    case " $slots " in *" $c "*) ;; *) SPATE_CONTROL_CORES=$c; break ;; esac
  done
fi
mkdir -p "$out"
unit() { # role description affinity
  cat > "$out/spate-$1.service" <<UNIT
[Unit]
Description=spate $2
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
Environment=SPATE_CONF_DIR=$SPATE_CONF_DIR
ExecStart=$SPATE_BIN $1 --config-dir $SPATE_CONF_DIR
Restart=on-failure
RestartSec=2
# Rings live in /dev/shm; slot threads pin themselves within this set.
${3:+CPUAffinity=$3}
LimitMEMLOCK=infinity
LimitNOFILE=1048576
KillSignal=SIGTERM
TimeoutStopSec=30

[Install]
WantedBy=multi-user.target
UNIT
  echo "wrote $out/spate-$1.service${3:+ (CPUAffinity=$3)}"
}
unit jobmanager "JobManager" "$SPATE_CONTROL_CORES"
tm_cores=$(echo "$slots $SPATE_CONTROL_CORES" | xargs)
unit taskmanager "TaskManager" "$tm_cores"
echo "install: cp $out/spate-*.service /etc/systemd/system/ && systemctl daemon-reload"
echo "         systemctl enable --now spate-jobmanager   # on the master"
echo "         systemctl enable --now spate-taskmanager  # on each worker"
