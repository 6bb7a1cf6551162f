#!/usr/bin/env bash
# One JobManager on this host: jobmanager.sh (start|stop|stop-all|status) [spate options]
# (see spate-daemon.sh for the environment it reads).
exec "$(dirname "${BASH_SOURCE[0]}")/spate-daemon.sh" "${1:-}" jobmanager "${@:2}"
