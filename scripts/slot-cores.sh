# Sourced by tune-host.sh and systemd-units.sh: slot_cores FILE prints the
# taskmanager.cpu.cores of a config.yaml as "0,1" (empty: none), whether written flat
# (`taskmanager.cpu.cores: [0, 1]`) or nested (`taskmanager:` then `  cpu.cores: [0, 1]`).
slot_cores() {
  [ -f "$1" ] || return 0
  awk '
    /^taskmanager\.cpu\.cores:/ { sub(/^[^:]*:[ \t]*/, ""); print; exit }
    /^taskmanager:[ \t]*(#.*)?$/ { intm = 1; next }
    intm && /^[^ \t#]/ { intm = 0 }
    intm && /^[ \t]+cpu\.cores:/ { sub(/^[^:]*:[ \t]*/, ""); print; exit }
  ' "$1" | sed -n 's/^\[\(.*\)\].*/\1/p' | tr -d ' '
}
