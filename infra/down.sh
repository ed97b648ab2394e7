#!/usr/bin/env bash
# Stops what infra/up.sh started, by the PIDs it recorded, and nothing else.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
stop() { # name
  pid_alive "$1" || { rm -f "$PIDS/$1.pid"; return 0; }
  local pid i
  pid=$(cat "$PIDS/$1.pid")
  # SIGINT is PostgreSQL's "fast" shutdown; the Python and Rust servers exit on it too.
  kill -INT "$pid" 2>/dev/null || true
  for i in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  rm -f "$PIDS/$1.pid"
  log "stopped $1"
}
for name in registry moto tansu postgres-tls postgres; do stop "$name"; done
