# Shared settings for the infra scripts. Sourced, never run.
# Caches (tools, venv) live outside the clone so fresh clones and CI runs reuse them;
# state (data dirs, logs, PIDs) lives outside the clone so a throwaway clone never owns it.
INFRA_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$INFRA_DIR")
TRIBUTARY_CACHE=${TRIBUTARY_CACHE:-$HOME/.cache/tributary}
TRIBUTARY_STATE=${TRIBUTARY_STATE:-/var/tmp/tributary-stack}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
PG_PORT=15432
PG_TLS_PORT=15433
PG_PASSWORD=tributary
KAFKA_PORT=19092
S3_PORT=19000
REGISTRY_PORT=18081
TANSU_VERSION=0.6.0
TANSU_BIN="$TRIBUTARY_CACHE/tansu-$TANSU_VERSION/bin/tansu"
VENV="$TRIBUTARY_CACHE/venv"
PROMTOOL="$TRIBUTARY_CACHE/prometheus/bin/promtool"
# One build for everything: the quickstart, up.sh (the registry), the tests and CI all
# compile the test profile into this directory, so a newcomer compiles the tree once.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$TRIBUTARY_CACHE/target}"
PIDS="$TRIBUTARY_STATE/pids"

log() { printf '[infra] %s\n' "$*" >&2; }
die() { printf '[infra] error: %s\n' "$*" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port name log
  local i
  for i in $(seq 1 120); do
    port_open "$1" && return 0
    sleep 0.5
  done
  [ -n "${3:-}" ] && tail -n 30 "$3" >&2
  die "$2 did not open 127.0.0.1:$1 within 60s"
}

# A recorded PID counts only while that process is alive.
pid_alive() { [ -f "$PIDS/$1.pid" ] && kill -0 "$(cat "$PIDS/$1.pid")" 2>/dev/null; }
