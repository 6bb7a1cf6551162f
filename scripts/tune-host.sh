#!/usr/bin/env bash
# Host tuning for low-latency runs on bare metal (as root). Prints what it changes;
# with --check, only reports. Each step is skipped where the host does not offer it.
set -uo pipefail
check=0; [ "${1:-}" = "--check" ] && check=1

say() { printf '%-44s %s\n' "$1" "$2"; }
set_file() { # path value description
  local path=$1 value=$2 what=$3
  if [ ! -w "$path" ]; then say "$what" "not available here"; return; fi
  local now; now=$(cat "$path" 2>/dev/null)
  if [ "$check" = 1 ] || [ "$now" = "$value" ]; then say "$what" "$now"; return; fi
  echo "$value" > "$path" 2>/dev/null && say "$what" "$now -> $value" || say "$what" "could not set ($now)"
}

for gov in /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor; do
  [ -e "$gov" ] && set_file "$gov" performance "governor $(basename "$(dirname "$(dirname "$gov")")")"
done
set_file /sys/kernel/mm/transparent_hugepage/enabled never "transparent hugepages"
set_file /proc/sys/kernel/numa_balancing 0 "automatic NUMA balancing"
set_file /proc/sys/kernel/sched_rt_runtime_us -1 "RT throttling"
set_file /proc/sys/kernel/watchdog 0 "soft lockup watchdog"
say "isolated cpus (isolcpus=)" "$(cat /sys/devices/system/cpu/isolated 2>/dev/null || echo unknown)"
say "nohz_full cpus" "$(cat /sys/devices/system/cpu/nohz_full 2>/dev/null || echo unknown)"
say "/dev/shm" "$(df -h /dev/shm 2>/dev/null | awk 'NR==2 {print $2 " tmpfs, " $4 " free"}')"
echo "Pin slots to isolated cores with taskmanager.cpu.cores in conf/config.yaml."
