#!/usr/bin/env bash
# End-to-end latency and peak memory of continuous runs at a steady rate:
# - Kafka → Delta on moto S3 at RATE events/s (default 50k) for DURATION seconds (benches/latency.rs);
# - Postgres → Delta (local disk) at a steady `pgbench -R PG_RATE` for DURATION seconds.
# Latency is measured from the tables (bench/delta_latency.py): per row, the commit
# time of the Delta version holding it minus its source time. Peak RSS is the run's
# VmHWM. Needs the local stack (infra/up.sh). Appends a section to BENCHMARKS.md.
#
#   bench/latency.sh
#   RATE=20000 PG_RATE=500 DURATION=30 bench/latency.sh
#   EXTRA="[sink.compaction]\\nenabled = false" bench/latency.sh   # appended to the Kafka pipeline
set -euo pipefail
cd "$(dirname "$0")/.."
source infra/env.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tributary/target}
export RATE=${RATE:-50000} DURATION=${DURATION:-60}
pg_rate=${PG_RATE:-500}
# One build for the binary and the bench: building the binary alone unifies features
# without the dev-dependencies and would rebuild every dependency a second time.
cargo bench --locked --no-run --bench latency 2>/dev/null
bin="$CARGO_TARGET_DIR/release/tributary"
export TRIBUTARY_BIN="$bin"

# --- Kafka ---------------------------------------------------------------------------------
kafka=$(cargo bench --locked --bench latency 2>/dev/null)
val() { sed -n "s/^$1=//p" <<<"$kafka"; }
kafka_latency=$("$TRIBUTARY_PYTHON" bench/delta_latency.py "$(val uri)/clicks" _timestamp)
kafka_files=$("$TRIBUTARY_PYTHON" bench/delta_files.py "$(val uri)/clicks")

# --- Postgres ------------------------------------------------------------------------------
pg=/usr/lib/postgresql/15/bin
base="$TRIBUTARY_PG_DSN"
db=bench_latency
dsn="${base/dbname=postgres/dbname=$db}"
work=$(mktemp -d)
psql() { "$pg/psql" -X -q -At -v ON_ERROR_STOP=1 "$@"; }
drop_all() {
  psql "$base" -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = 'bench_latency'" >/dev/null
  psql "$base" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)"
}
trap 'drop_all >/dev/null 2>&1; rm -rf "$work"' EXIT
drop_all
psql "$base" -c "CREATE DATABASE $db"
"$pg/pgbench" -i -s 1 -q "$dsn" >/dev/null 2>&1
psql "$dsn" -c "CREATE PUBLICATION bench_pub FOR TABLE pgbench_accounts, pgbench_tellers, pgbench_branches, pgbench_history"
{
  printf 'name = "latency"\n[source]\nkind = "postgres"\ndsn = "%s"\npublication = "bench_pub"\n' "$dsn"
  printf 'slot = "bench_latency"\ntables = ["pgbench_accounts", "pgbench_tellers", "pgbench_branches", "pgbench_history"]\n'
  printf '[sink]\nuri = "%s/lake"\n' "$work"
  for t in pgbench_accounts pgbench_tellers pgbench_branches; do
    printf '[[tables]]\nname = "%s"\nfrom = "public.%s"\nmode = "mirror"\n' "$t" "$t"
  done
  printf '[[tables]]\nname = "pgbench_history"\nfrom = "public.pgbench_history"\nmode = "changelog"\n'
} >"$work/pg.toml"
"$bin" run "$work/pg.toml" >"$work/run.out" 2>"$work/run.err" &
run=$!
sleep 5
"$pg/pgbench" -R "$pg_rate" -T "$DURATION" -c 2 -j 2 -n "$dsn" >"$work/pgbench.log" 2>&1
sleep 3
pg_rss=$(( $(awk '/VmHWM/{print $2}' /proc/$run/status) / 1024 ))
kill -TERM "$run"
wait "$run"
txns=$(psql "$dsn" -c "SELECT count(*) FROM pgbench_history")
pg_latency=$("$TRIBUTARY_PYTHON" bench/delta_latency.py "$work/lake/pgbench_history" _commit_ts)
pg_files=""
for t in pgbench_accounts pgbench_tellers pgbench_branches pgbench_history; do
  pg_files="$pg_files $t $("$TRIBUTARY_PYTHON" bench/delta_files.py "$work/lake/$t"),"
done

{
  echo
  echo "## Steady-state latency and memory, $(date -u +%Y-%m-%d) @ $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo
  echo "Machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(free -g | awk '/Mem:/{print $2}') GiB; tansu (memory), moto S3, PostgreSQL 15 and the producer on the same machine."
  echo "Command: \`${EXTRA:+EXTRA=\"$EXTRA\" }RATE=$RATE PG_RATE=$pg_rate DURATION=$DURATION bench/latency.sh\` (release build, default settings: adaptive \`[batch]\` trigger, \`[sink.compaction]\` every 10s at 10 small files, \`[runtime] memory = 256MiB\`)."
  echo "Latency per row: commit time of the Delta version holding the row minus its source time (Kafka timestamp, Postgres commit time), from the tables."
  echo
  echo "| run | rate | rows | latency | peak RSS | files at the end |"
  echo "|---|---|---|---|---|---|"
  echo "| Kafka (3 partitions) → Delta on moto S3 | $(val achieved_rate) events/s | $(val events) | $kafka_latency | $(val peak_rss_mib) MiB | $kafka_files |"
  echo "| Postgres (pgbench, 3 mirrors + history changelog) → Delta on local disk | pgbench -R $pg_rate | $txns transactions ($((txns * 4)) changes) | $pg_latency | $pg_rss MiB |${pg_files%,} |"
  echo
  echo "The Kafka run's own \`tributary_end_to_end_latency_seconds\` histogram gave a mean of $(val metrics_mean_latency_ms) ms over $(val commits) commits."
} | tee -a BENCHMARKS.md
