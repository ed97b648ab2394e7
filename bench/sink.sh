#!/usr/bin/env bash
# Sink throughput (benches/sink.rs): append and mirror MERGE with 10k-row batches beside
# the Parquet encode rate of the same batches. Appends a table to BENCHMARKS.md.
#
#   bench/sink.sh              # release profile
#   PROFILE=dev bench/sink.sh  # dependencies optimised (opt-level 2), our crate not
set -euo pipefail
cd "$(dirname "$0")/.."
# Builds share the persistent target dir the tests and CI use (a cold one takes ~34 min).
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tributary/target}
profile=${PROFILE:-release}
out=$(cargo bench --locked --profile "$profile" --bench sink 2>/dev/null)
{
  echo
  echo "## Sink: append and mirror MERGE, $(date -u +%Y-%m-%d) @ $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo
  echo "Machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(free -g | awk '/Mem:/{print $2}') GiB, local disk."
  echo "Command: \`PROFILE=$profile bench/sink.sh\` (benches/sink.rs: 10k-row batches of id, name, amount)."
  echo
  echo "$out"
} | tee -a BENCHMARKS.md
