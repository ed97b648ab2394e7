#!/usr/bin/env bash
# Kafka → Delta (benches/kafka.rs): decode-only rates (direct Avro → Arrow vs apache-avro
# Values), the raw drain rate of an rdkafka consumer (the limit), and `tributary run
# --once` into Delta on moto S3, for the clickstream schema over 3 partitions on tansu.
# Needs the local stack: run infra/up.sh first. Appends a table to BENCHMARKS.md.
#
#   bench/kafka.sh                 # 1M events
#   EVENTS=200000 bench/kafka.sh
#   FORMAT=json bench/kafka.sh     # the same events as JSON (no Python row)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f infra/env.sh ] || { echo "run infra/up.sh first" >&2; exit 1; }
source infra/env.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tributary/target}
# The bench build also builds the binary, with the same features (a separate `cargo build
# --bin` would unify them without dev-dependencies and rebuild every dependency).
cargo bench --locked --no-run --bench kafka 2>/dev/null
export TRIBUTARY_BIN="$CARGO_TARGET_DIR/release/tributary"
out=$(cargo bench --locked --bench kafka 2>/dev/null)
{
  echo
  echo "## Kafka → Delta, $(date -u +%Y-%m-%d) @ $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo
  echo "Machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(free -g | awk '/Mem:/{print $2}') GiB; tansu (memory storage), moto S3 and the registry on loopback."
  echo "Command: \`${FORMAT:+FORMAT=$FORMAT }EVENTS=${EVENTS:-1000000} bench/kafka.sh\` (benches/kafka.rs, release)."
  echo
  echo "$out"
} | tee -a BENCHMARKS.md
