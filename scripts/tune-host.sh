#!/usr/bin/env bash
# Host tuning for low-latency runs on bare metal (as root). Prints what it changes;
# with --check, only reports. Each step is skipped where the host does not offer it.
# The slot cores are taskmanager.cpu.cores of $SPATE_CONF_DIR/config.yaml (default
# ./conf), or --cores 2,3 ; for each, --check says whether it is isolated (isolcpus,
# nohz_full, rcu_nocbs), which IRQs may land on it, its governor and C-states, and
# what to change.
set -uo pipefail
check=0 cores=""
while [ $# -gt 0 ]; do
  case "$1" in
    --check) check=1 ;;
    --cores) cores=$2; shift ;;
    *) echo "usage: $0 [--check] [--cores 2,3]" >&2; exit 2 ;;
  esac
  shift
done
conf=${SPATE_CONF_DIR:-conf}/config.yaml
. "$(dirname "${BASH_SOURCE[0]}")/slot-cores.sh"
[ -n "$cores" ] || cores=$(slot_cores "$conf")

say() { printf '%-44s %s\n' "$1" "$2"; }
advice=()
set_file() { # path value description
  local path=$1 value=$2 what=$3
  if [ ! -w "$path" ]; then say "$what" "not available here"; return; fi
  local now; now=$(cat "$path" 2>/dev/null)
  if [ "$check" = 1 ] || [ "$now" = "$value" ]; then say "$what" "$now"; return; fi
  echo "$value" > "$path" 2>/dev/null && say "$what" "$now -> $value" || say "$what" "could not set ($now)"
}

# Whether cpu $1 is in a kernel cpu list such as "2-5,8".
in_list() {
  local cpu=$1 list=$2 part
  IFS=, read -ra parts <<< "$list"
  for part in ${parts[@]+"${parts[@]}"}; do
    case "$part" in
      *-*) [ "$cpu" -ge "${part%-*}" ] && [ "$cpu" -le "${part#*-}" ] && return 0 ;;
      "") ;;
      *) [ "$cpu" = "$part" ] && return 0 ;;
    esac
  done
  return 1
}
cmdline_list() { tr ' ' '\n' < /proc/cmdline 2>/dev/null | sed -n "s/^$1=\(.*\)/\1/p" | sed 's/^[a-z_,]*,\([0-9]\)/\1/'; }

for gov in /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor; do
  [ -e "$gov" ] && set_file "$gov" performance "governor $(basename "$(dirname "$(dirname "$gov")")")"
done
set_file /sys/kernel/mm/transparent_hugepage/enabled never "transparent hugepages"
set_file /proc/sys/kernel/numa_balancing 0 "automatic NUMA balancing"
set_file /proc/sys/kernel/sched_rt_runtime_us -1 "RT throttling"
set_file /proc/sys/kernel/watchdog 0 "soft lockup watchdog"
isolated=$(cat /sys/devices/system/cpu/isolated 2>/dev/null || echo "")
nohz=$(cat /sys/devices/system/cpu/nohz_full 2>/dev/null || echo "")
rcu=$(cmdline_list rcu_nocbs)
say "isolated cpus (isolcpus=)" "${isolated:-none}"
say "nohz_full cpus" "${nohz:-none}"
say "rcu_nocbs cpus" "${rcu:-none}"
say "/dev/shm" "$(df -h /dev/shm 2>/dev/null | awk 'NR==2 {print $2 " tmpfs, " $4 " free"}')"

if [ -z "$cores" ]; then
  echo "No slot cores configured (taskmanager.cpu.cores is empty): slots take any core."
  echo "Pin slots to isolated cores with taskmanager.cpu.cores in conf/config.yaml."
  exit 0
fi
echo "slot cores: $cores"
IFS=, read -ra slot_cores <<< "$cores"
for c in "${slot_cores[@]}"; do
  [ -d "/sys/devices/system/cpu/cpu$c" ] || { say "core $c" "does not exist on this host"; advice+=("core $c: not on this host; fix taskmanager.cpu.cores"); continue; }
  in_list "$c" "$isolated" && iso=yes || { iso=no; advice+=("core $c: add it to isolcpus= (or cpuset isolation) so the scheduler keeps other threads off it"); }
  in_list "$c" "$nohz" && nz=yes || { nz=no; advice+=("core $c: add it to nohz_full= to stop the scheduler tick while its slot spins"); }
  in_list "$c" "$rcu" && rc=yes || { rc=no; advice+=("core $c: add it to rcu_nocbs= to move RCU callbacks off it"); }
  gov=$(cat "/sys/devices/system/cpu/cpu$c/cpufreq/scaling_governor" 2>/dev/null || echo "n/a")
  [ "$gov" = "n/a" ] || [ "$gov" = "performance" ] || advice+=("core $c: governor $gov; set performance (this script does, as root)")
  irqs=()
  for d in /proc/irq/[0-9]*; do
    aff=$(cat "$d/smp_affinity_list" 2>/dev/null) || continue
    in_list "$c" "$aff" && irqs+=("$(basename "$d")")
  done
  [ ${#irqs[@]} -gt 0 ] && advice+=("core $c: ${#irqs[@]} IRQ(s) may land on it; steer them away (irqbalance --banirq, or /proc/irq/N/smp_affinity_list)")
  states=""
  for s in /sys/devices/system/cpu/cpu"$c"/cpuidle/state*; do
    [ -d "$s" ] || continue
    name=$(cat "$s/name"); dis=$(cat "$s/disable" 2>/dev/null || echo 0)
    states="$states $name$([ "$dis" = 1 ] && echo '(off)')"
    [ "$dis" = 1 ] || [ "$name" = POLL ] || [ "$name" = C0 ] || [ "$name" = C1 ] \
      || advice+=("core $c: C-state $name enabled; disable deep C-states (echo 1 > $s/disable, or intel_idle.max_cstate=1)")
  done
  say "core $c" "isolated $iso, nohz_full $nz, rcu_nocbs $rc, governor $gov, ${#irqs[@]} IRQ(s), C-states:${states:- n/a}"
done
if [ ${#advice[@]} -eq 0 ]; then
  echo "The slot cores are ready for busy-spinning slots."
else
  echo "To change:"
  printf '  - %s\n' "${advice[@]}"
fi
