#!/usr/bin/env bash
# Aggregates across a consumer group (bench/scale_out.py): throughput of per-partition
# aggregates (tumbling + exact distinct, session, global) run by 1, 2 and 3 processes in
# one group over a 6-partition keyed topic on tansu, and the state hand-over when a third
# process joins two. Local-disk tables, release build. Needs the local stack: run
# infra/up.sh first. Appends a table to BENCHMARKS.md.
#
#   bench/scale_out.sh                 # 2M events
#   EVENTS=500000 bench/scale_out.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f infra/env.sh ] || { echo "run infra/up.sh first" >&2; exit 1; }
source infra/env.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tributary/target}
# The bench build also builds the binary, with the same features as the other benches.
cargo bench --locked --no-run --bench sink 2>/dev/null
events=${EVENTS:-2000000}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
out=$("$TRIBUTARY_PYTHON" bench/scale_out.py "$events" "$CARGO_TARGET_DIR/release/tributary" "$work")
{
  echo
  echo "## Aggregates across a consumer group, $(date -u +%Y-%m-%d) @ $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo
  echo "Machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(free -g | awk '/Mem:/{print $2}') GiB; tansu (memory storage) on loopback, tables on local disk."
  echo "Command: \`EVENTS=$events bench/scale_out.sh\` (bench/scale_out.py, release). Every process runs the same file: JSON values, \`key_format = \"string\"\`, \`scale_out = true\`, three per-partition aggregates grouped by the key."
  echo
  echo "$out"
} | tee -a BENCHMARKS.md
