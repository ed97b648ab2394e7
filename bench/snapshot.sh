#!/usr/bin/env bash
# Initial snapshots of pgbench accounts at SCALE (100k rows per unit; 20 = 2M rows),
# each `tributary run --once` on a fresh lake and slot, under `[runtime] memory`:
#   one_piece    a keyless copy of the table (REPLICA IDENTITY FULL) as a changelog:
#                one COPY in an exported snapshot (the baseline, as before chunks)
#   incremental  the table itself (primary key) as a changelog: chunks of CHUNK rows
#                between watermarks while the slot streams
#   incremental_mirror  the same into a deletion-vector mirror
# Per run: wall time, rows/s, peak RSS (VmHWM); the table is checked against Postgres
# (count and sum of balances, DuckDB). Needs the local stack (infra/up.sh). Appends a
# section to BENCHMARKS.md.
#
#   bench/snapshot.sh                  # SCALE=20 MEMORY=256MiB CHUNK=100000
set -euo pipefail
cd "$(dirname "$0")/.."
source infra/env.sh
scale=${SCALE:-20}
memory=${MEMORY:-256MiB}
chunk=${CHUNK:-100000}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tributary/target}
if [ -z "${BIN:-}" ]; then
  cargo bench --locked --no-run --bench sink 2>/dev/null
fi
bin="${BIN:-$CARGO_TARGET_DIR/release/tributary}"
pg=/usr/lib/postgresql/15/bin
base="$TRIBUTARY_PG_DSN"
db=bench_snapshot
dsn="${base/dbname=postgres/dbname=$db}"
work=$(mktemp -d /var/tmp/tributary-bench-snapshot.XXXXXX)
psql() { "$pg/psql" -X -q -At -v ON_ERROR_STOP=1 "$@"; }
drop_all() {
  psql "$base" -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name LIKE 'bench\_snap%'" >/dev/null
  psql "$base" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)"
}
trap 'drop_all >/dev/null 2>&1; rm -rf "$work"' EXIT
duck() { "$TRIBUTARY_PYTHON" tests/duckdb_query.py <<<"$1" | tr -d '[] \n'; }

drop_all
psql "$base" -c "CREATE DATABASE $db"
"$pg/pgbench" -i -s "$scale" -q "$dsn" >/dev/null 2>&1
psql "$dsn" -c "CREATE TABLE accounts_nokey AS SELECT * FROM pgbench_accounts; ALTER TABLE accounts_nokey REPLICA IDENTITY FULL"
psql "$dsn" -c "VACUUM ANALYZE accounts_nokey"
n=$((scale * 100000))
truth=$(psql "$dsn" -F, -c "SELECT count(*), sum(abalance) FROM pgbench_accounts")

rows=()
for run in one_piece incremental incremental_mirror; do
  case $run in
    one_piece) table=accounts_nokey mode=changelog ;;
    incremental) table=pgbench_accounts mode=changelog ;;
    incremental_mirror) table=pgbench_accounts mode=mirror ;;
  esac
  dir="$work/$run"
  mkdir -p "$dir"
  {
    printf 'name = "bench_snap_%s"\n[source]\nkind = "postgres"\ndsn = "%s"\npublication = "bench_snap_%s"\n' "$run" "$dsn" "$run"
    printf 'slot = "bench_snap_%s"\ntables = ["%s"]\nsnapshot_chunk_rows = %s\n' "$run" "$table" "$chunk"
    printf '[sink]\nuri = "%s/lake"\n' "$dir"
    printf '[runtime]\nmemory = "%s"\ncache_dir = "%s/cache"\n' "$memory" "$dir"
    printf '[[tables]]\nname = "accounts"\nfrom = "public.%s"\nmode = "%s"\n' "$table" "$mode"
  } >"$dir/pipeline.toml"
  t0=$(date +%s%N)
  "$bin" run "$dir/pipeline.toml" --once >"$dir/out" 2>"$dir/err" &
  pid=$!
  hwm=0
  while kill -0 "$pid" 2>/dev/null; do
    h=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    [ "${h:-0}" -gt "$hwm" ] && hwm=$h
    sleep 0.2
  done
  wait "$pid" || { tail -20 "$dir/err" >&2; echo "the run failed" >&2; exit 1; }
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  where=""
  [ "$mode" = changelog ] && where="WHERE _op = 'r'"
  delta=$(duck "SELECT count(*), sum(abalance) FROM delta_scan('$dir/lake/accounts') $where")
  [ "$truth" = "$delta" ] || { echo "$run: table $delta != postgres $truth" >&2; exit 1; }
  chunks=$(grep -c 'snapshot chunk handed over' "$dir/err" || true)
  rate=$(( n * 1000 / ms ))
  echo "[bench] $run: $n rows in ${ms}ms ($rate rows/s), $chunks chunks, peak RSS $((hwm / 1024))MiB; table = Postgres ($truth)" >&2
  rows+=("| $run | \`$mode\` | $n | $chunks | ${ms} | ${rate} | $((hwm / 1024)) MiB | equal ($truth) |")
done

{
  echo
  echo "## Initial snapshot: incremental chunks vs one piece ($(date -u +%Y-%m-%d), $(git rev-parse --short HEAD))"
  echo
  echo "Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo). Command: \`SCALE=$scale MEMORY=$memory CHUNK=$chunk bench/snapshot.sh\`."
  echo "pgbench accounts ($n rows), \`tributary run --once\` on a fresh lake and slot under \`[runtime] memory = \"$memory\"\`, tables on local disk."
  echo "Baseline: \`one_piece\`, a keyless copy of the table (one COPY in an exported snapshot, as every snapshot was before chunks)."
  echo
  echo "| run | table mode | rows | chunks | run --once (ms) | rows/s | peak RSS | table vs Postgres |"
  echo "|---|---|---|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
} >>BENCHMARKS.md
echo "[bench] appended to BENCHMARKS.md" >&2
