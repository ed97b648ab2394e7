#!/usr/bin/env bash
# Mirror cost against table size: pgbench accounts/tellers/branches mirrored (plus the
# history changelog) on local disk at a steady `pgbench -R RATE`, for each pgbench scale
# in SCALES and each merge mode in MODES. Per run: latency p50/p99 (Postgres commit →
# Delta commit of the micro-batch, from the history changelog that commits after the
# mirrors), Tributary's CPU during the steady
# load (cores), and its peak RSS (VmHWM, snapshot included) against `[runtime] memory`.
# Needs the local stack (infra/up.sh). Appends a section to BENCHMARKS.md.
#
#   bench/mirror.sh                                   # SCALES="5 50", both modes
#   SCALES="5 50 500" MODES=deletion_vectors bench/mirror.sh
#   RATE=1000 DURATION=60 MEMORY=256MiB bench/mirror.sh
#   BIN=/tmp/tributary-old SCALES=500 MEMORY=512MiB bench/mirror.sh
#   EXTRA_SINK='[sink.compaction]\nenabled = false\n' OUT=/tmp/x.md bench/mirror.sh
#   KEEP_LOG=/tmp/run TRIBUTARY_LOG=info,tributary::runtime=debug bench/mirror.sh  # keeps each run's log
set -euo pipefail
cd "$(dirname "$0")/.."
source infra/env.sh
scales=${SCALES:-"5 50"}
modes=${MODES:-"deletion_vectors copy_on_write"}
rate=${RATE:-1000}
duration=${DURATION:-60}
memory=${MEMORY:-256MiB}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tributary/target}
# One build for the binary and the benches (see bench/latency.sh); BIN=path runs a
# binary built before (a comparison across commits) without building.
if [ -z "${BIN:-}" ]; then
  cargo bench --locked --no-run --bench sink 2>/dev/null
fi
bin="${BIN:-$CARGO_TARGET_DIR/release/tributary}"
pg=/usr/lib/postgresql/15/bin
base="$TRIBUTARY_PG_DSN"
db=bench_mirror
dsn="${base/dbname=postgres/dbname=$db}"
work=$(mktemp -d /var/tmp/tributary-bench-mirror.XXXXXX)
psql() { "$pg/psql" -X -q -At -v ON_ERROR_STOP=1 "$@"; }
drop_all() {
  psql "$base" -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name LIKE 'bench\_mirror%'" >/dev/null
  psql "$base" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)"
}
trap 'drop_all >/dev/null 2>&1; rm -rf "$work"' EXIT
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rows=()
for scale in $scales; do
  drop_all
  psql "$base" -c "CREATE DATABASE $db"
  t0=$(date +%s)
  "$pg/pgbench" -i -s "$scale" -q "$dsn" >/dev/null 2>&1
  echo "[bench] pgbench -i -s $scale took $(( $(date +%s) - t0 ))s" >&2
  psql "$dsn" -c "CREATE PUBLICATION bench_pub FOR TABLE pgbench_accounts, pgbench_tellers, pgbench_branches, pgbench_history"
  for mode in $modes; do
    slot="bench_mirror_${mode}"
    rm -rf "$work/$mode"
    mkdir -p "$work/$mode"
    {
      printf 'name = "%s"\n[source]\nkind = "postgres"\ndsn = "%s"\npublication = "bench_pub"\n' "$slot" "$dsn"
      printf 'slot = "%s"\ntables = ["pgbench_accounts", "pgbench_tellers", "pgbench_branches", "pgbench_history"]\n' "$slot"
      printf '[sink]\nuri = "%s/%s/lake"\n' "$work" "$mode"
      printf '%b' "${EXTRA_SINK:-}"
      printf '[runtime]\nmemory = "%s"\ncache_dir = "%s/%s/cache"\n' "$memory" "$work" "$mode"
      for t in pgbench_accounts pgbench_tellers pgbench_branches; do
        printf '[[tables]]\nname = "%s"\nfrom = "public.%s"\nmode = "mirror"\nmerge = "%s"\n' "$t" "$t" "$mode"
      done
      printf '[[tables]]\nname = "pgbench_history"\nfrom = "public.pgbench_history"\nmode = "changelog"\n'
    } >"$work/$mode/pipeline.toml"
    t0=$(date +%s)
    "$bin" run "$work/$mode/pipeline.toml" >"$work/$mode/run.out" 2>"$work/$mode/run.err" &
    run=$!
    # The snapshot is done when the accounts mirror holds every account.
    want=$((scale * 100000))
    while :; do
      kill -0 "$run" 2>/dev/null || { tail -20 "$work/$mode/run.err" >&2; echo "the run died" >&2; exit 1; }
      n=$("$TRIBUTARY_PYTHON" tests/duckdb_query.py <<<"SELECT count(*) FROM delta_scan('$work/$mode/lake/pgbench_accounts')" 2>/dev/null | tr -dc 0-9 || true)
      [ "${n:-0}" = "$want" ] && break
      sleep 5
    done
    snapshot_s=$(( $(date +%s) - t0 ))
    echo "[bench] scale $scale $mode: snapshot of $want accounts in ${snapshot_s}s" >&2
    since_ms=$(( $(date +%s%3N) + 2000 ))
    sleep 2
    c0=$(cpu_ticks "$run")
    w0=$(date +%s.%N)
    "$pg/pgbench" -R "$rate" -T "$duration" -c 4 -j 2 -n "$dsn" >"$work/$mode/pgbench.log" 2>&1
    sleep 5
    c1=$(cpu_ticks "$run")
    w1=$(date +%s.%N)
    rss=$(( $(awk '/VmHWM/{print $2}' "/proc/$run/status") / 1024 ))
    kill -TERM "$run"
    wait "$run" || true
    hz=$(getconf CLK_TCK)
    cores=$(awk "BEGIN{printf \"%.2f\", ($c1 - $c0) / $hz / ($w1 - $w0)}")
    # Latency from the history changelog, which commits with the three mirrors of
    # each micro-batch (a copy-on-write mirror rewrites old rows into new files, so
    # its own files do not tell when a change landed).
    latency=$("$TRIBUTARY_PYTHON" bench/delta_latency.py "$work/$mode/lake/pgbench_history" _commit_ts "$since_ms")
    tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$work/$mode/pgbench.log" | head -1)
    files=$(find "$work/$mode/lake/pgbench_accounts" -maxdepth 1 -name '*.parquet' | wc -l)
    rows+=("| $scale | $((scale * 100000)) | $mode | ${snapshot_s}s | ${tps:-?} | $latency | $cores | $rss MiB | $files |")
    echo "[bench] ${rows[-1]}" >&2
    psql "$dsn" -c "SELECT pg_drop_replication_slot('$slot')" >/dev/null 2>&1 || true
    [ -n "${KEEP_LOG:-}" ] && cp "$work/$mode/run.err" "$KEEP_LOG.$scale.$mode"
    rm -rf "$work/$mode"
  done
done

{
  echo
  echo "## Mirror cost against table size, $(date -u +%Y-%m-%d) @ $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo
  echo "Machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(free -g | awk '/Mem:/{print $2}') GiB, local disk; PostgreSQL 15 on the same machine."
  echo "Command: \`SCALES=\"$scales\" MODES=\"$modes\" RATE=$rate DURATION=$duration MEMORY=$memory bench/mirror.sh\` (release build, default \`[batch]\` triggers)."
  echo "Each run: snapshot of \`pgbench -i -s SCALE\`, then \`pgbench -R $rate -c 4\` for ${duration}s into 3 mirrors + the history changelog."
  echo "Latency: per pgbench transaction, commit time of the Delta version of the history changelog holding it (the four tables of a micro-batch commit side by side, so it lands with the mirrors, not necessarily after them) minus its Postgres commit time."
  echo "CPU: Tributary's user+system time during the steady load over its wall time. Peak RSS: VmHWM of the whole run (snapshot included), budget \`[runtime] memory = $memory\`."
  echo
  echo "| scale | accounts | merge | snapshot | pgbench tps | latency | CPU (cores) | peak RSS | accounts files |"
  echo "|---|---|---|---|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
} | tee -a "${OUT:-BENCHMARKS.md}"
