#!/usr/bin/env bash
# One TaskManager on this host: taskmanager.sh (start|stop|stop-all|status) [spate options]
# (see spate-daemon.sh for the environment it reads).
exec "$(dirname "${BASH_SOURCE[0]}")/spate-daemon.sh" "${1:-}" taskmanager "${@:2}"
