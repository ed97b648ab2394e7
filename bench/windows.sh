#!/usr/bin/env bash
# Window operators (benches/windows.rs): events/s on one core for tumbling, hopping (10 ×
# slide), session, global and cumulating windows, with count + exact distinct count, an
# `over` step, and the hopping/tumbling cost ratio. No services needed. Appends a table
# to BENCHMARKS.md.
#
#   bench/windows.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# Builds share the persistent target dir the tests and CI use (a cold one takes ~34 min).
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tributary/target}
out=$(cargo bench --locked --bench windows 2>/dev/null)
{
  echo
  echo "## Window operators, $(date -u +%Y-%m-%d) @ $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo
  echo "Machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(free -g | awk '/Mem:/{print $2}') GiB; one thread, no I/O."
  echo "Command: \`bench/windows.sh\` (benches/windows.rs, release)."
  echo
  echo "$out"
} | tee -a BENCHMARKS.md
