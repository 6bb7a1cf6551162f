# Sourced by start-cluster.sh and stop-cluster.sh: the hosts of conf/masters and
# conf/workers, and how to run a script on one of them.
SPATE_HOME=${SPATE_HOME:-$(dirname "$here")}
SPATE_CONF_DIR=${SPATE_CONF_DIR:-$SPATE_HOME/conf}
export SPATE_HOME SPATE_CONF_DIR

# Lines of a host file without comments and blank lines.
hosts_of() {
  [ -f "$1" ] || { echo "$1 does not exist" >&2; return 1; }
  sed -e 's/#.*//' -e 's/[[:space:]]*$//' -e '/^$/d' "$1"
}
# "host port" per master (port empty when the line has none).
masters() { hosts_of "$SPATE_CONF_DIR/masters" | awk -F: '{print $1, $2}'; }
workers() { hosts_of "$SPATE_CONF_DIR/workers"; }

is_local() {
  case "$1" in localhost|127.*|::1|"$(hostname)"|"$(hostname -f 2>/dev/null)") return 0 ;; esac
  return 1
}

# on_host HOST SCRIPT ARGS...: runs scripts/SCRIPT here or over ssh.
on_host() {
  local host=$1 script=$2
  shift 2
  if is_local "$host"; then
    "$SPATE_HOME/scripts/$script" "$@"
  else
    local env="SPATE_CONF_DIR=$(printf %q "$SPATE_CONF_DIR")"
    [ -n "${SPATE_BIN:-}" ] && env="$env SPATE_BIN=$(printf %q "$SPATE_BIN")"
    # shellcheck disable=SC2086
    ssh -n ${SPATE_SSH_OPTS:-} "$host" "$env $(printf %q "$SPATE_HOME/scripts/$script") $(printf '%q ' "$@")"
  fi
}
