#!/usr/bin/env bash
# One Postgres transaction larger than the memory budget: pgbench accounts at SCALE
# (100k rows per unit; 30 = 3M rows) mirrored by deletion vectors, then ONE
# `UPDATE pgbench_accounts SET abalance = abalance + 1` (every row), taken by a
# `run --once` under `[runtime] memory = MEMORY`. Per run: wall time, rows/s, peak RSS
# (VmHWM) and the mirror checked against Postgres (count and sum of balances, DuckDB).
# The spilled run is first SIGKILLed KILL_AFTER seconds into its intake (default 8; 0 =
# no kill) and then run to the end: the figures are those of the run that completes.
# Checks that the mirror gained exactly one version with data for the transaction.
# Baseline in the same run: the same with spilling turned off (`spill_after` larger than
# the transaction), i.e. the transaction held in memory as before.
# Needs the local stack (infra/up.sh). Appends a section to BENCHMARKS.md.
#
#   bench/large_txn.sh                       # SCALE=30 MEMORY=256MiB
#   SCALE=10 BASELINE=0 bench/large_txn.sh   # without the in-memory baseline
#   KEEP_LOG=/tmp/large bench/large_txn.sh   # keeps each run's log there
#   MODE=changelog BASELINE=0 bench/large_txn.sh   # the accounts table as a changelog
set -euo pipefail
cd "$(dirname "$0")/.."
source infra/env.sh
scale=${SCALE:-30}
memory=${MEMORY:-256MiB}
baseline=${BASELINE:-1}
kill_after=${KILL_AFTER:-8}
mode=${MODE:-mirror}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tributary/target}
if [ -z "${BIN:-}" ]; then
  cargo bench --locked --no-run --bench sink 2>/dev/null
fi
bin="${BIN:-$CARGO_TARGET_DIR/release/tributary}"
pg=/usr/lib/postgresql/15/bin
base="$TRIBUTARY_PG_DSN"
db=bench_large_txn
dsn="${base/dbname=postgres/dbname=$db}"
work=$(mktemp -d /var/tmp/tributary-bench-large.XXXXXX)
psql() { "$pg/psql" -X -q -At -v ON_ERROR_STOP=1 "$@"; }
drop_all() {
  psql "$base" -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name LIKE 'bench\_large%'" >/dev/null
  psql "$base" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)"
}
trap 'drop_all >/dev/null 2>&1; rm -rf "$work"' EXIT
duck() { "$TRIBUTARY_PYTHON" tests/duckdb_query.py <<<"$1" | tr -d '[] \n'; }

# Runs `tributary run --once` on $1 and prints "seconds peak_rss_mib".
measure() {
  local t0 pid hwm=0 h
  t0=$(date +%s%N)
  "$bin" run "$1" --once >"$1.out" 2>"$1.err" &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    h=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    [ "${h:-0}" -gt "$hwm" ] && hwm=$h
    sleep 0.2
  done
  wait "$pid" || { tail -20 "$1.err" >&2; echo "the run failed" >&2; exit 1; }
  if [ -n "${KEEP_LOG:-}" ]; then
    mkdir -p "$KEEP_LOG"
    cp "$1.err" "$KEEP_LOG/$(basename "$(dirname "$1")")-$(date +%s).err"
  fi
  echo "$(( ($(date +%s%N) - t0) / 1000000 )) $(( hwm / 1024 ))"
}

rows=()
for spill in "" ${baseline:+64GiB}; do
  [ "$baseline" = 0 ] && [ -n "$spill" ] && continue
  drop_all
  psql "$base" -c "CREATE DATABASE $db"
  "$pg/pgbench" -i -s "$scale" -q "$dsn" >/dev/null 2>&1
  psql "$dsn" -c "CREATE PUBLICATION bench_pub FOR TABLE pgbench_accounts"
  name=${spill:+in_memory}
  name=${name:-spilled}
  dir="$work/$name"
  mkdir -p "$dir"
  {
    printf 'name = "bench_large_%s"\n[source]\nkind = "postgres"\ndsn = "%s"\npublication = "bench_pub"\n' "$name" "$dsn"
    printf 'slot = "bench_large_%s"\ntables = ["pgbench_accounts"]\n' "$name"
    [ -n "$spill" ] && printf 'spill_after = "%s"\n' "$spill"
    printf '[sink]\nuri = "%s/lake"\n' "$dir"
    printf '[runtime]\nmemory = "%s"\ncache_dir = "%s/cache"\n' "$memory" "$dir"
    printf '[[tables]]\nname = "accounts"\nfrom = "public.pgbench_accounts"\nmode = "%s"\n' "$mode"
  } >"$dir/pipeline.toml"
  read -r snap_ms snap_rss < <(measure "$dir/pipeline.toml")
  echo "[bench] $name: snapshot of $((scale * 100000)) rows in ${snap_ms}ms, peak RSS ${snap_rss}MiB" >&2
  before=$(ls "$dir/lake/accounts/_delta_log" | grep -c '\.json$')
  t0=$(date +%s%N)
  psql "$dsn" -c "UPDATE pgbench_accounts SET abalance = abalance + 1"
  update_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  killed=""
  if [ -z "$spill" ] && [ "$kill_after" != 0 ]; then
    "$bin" run "$dir/pipeline.toml" --once >"$dir/killed.out" 2>"$dir/killed.err" &
    victim=$!
    sleep "$kill_after"
    if kill -KILL "$victim" 2>/dev/null; then
      killed=" (after a SIGKILL ${kill_after}s into the first run)"
      spilled_files=$( (find "$dir/cache/spill" -type f 2>/dev/null || true) | wc -l)
      echo "[bench] $name: SIGKILLed the first run after ${kill_after}s with $spilled_files spill files on disk" >&2
    fi
    wait "$victim" 2>/dev/null || true
  fi
  read -r ms rss < <(measure "$dir/pipeline.toml")
  versions=$(cd "$dir/lake/accounts/_delta_log" && ls | grep '\.json$' | sort | tail -n +$((before + 1)) | xargs -r grep -l '^{"add"' | wc -l)
  [ "$versions" = 1 ] || { echo "$versions versions with data for one transaction" >&2; exit 1; }
  truth=$(psql "$dsn" -F, -c "SELECT count(*), sum(abalance) FROM pgbench_accounts")
  if [ "$mode" = changelog ]; then
    # The last change of every account (the snapshot row, then the update).
    delta=$(duck "SELECT count(*), sum(abalance) FROM (SELECT abalance, row_number() OVER (PARTITION BY aid ORDER BY _position DESC) AS r FROM delta_scan('$dir/lake/accounts')) WHERE r = 1")
  else
    delta=$(duck "SELECT count(*), sum(abalance) FROM delta_scan('$dir/lake/accounts')")
  fi
  [ "$truth" = "$delta" ] || { echo "mirror $delta != postgres $truth" >&2; exit 1; }
  n=$((scale * 100000))
  rate=$(( n * 1000 / ms ))
  echo "[bench] $name: one transaction of $n updates in ${ms}ms ($rate rows/s), peak RSS ${rss}MiB; table = Postgres ($truth)" >&2
  rows+=("| $name$killed | $n | ${update_ms} | ${ms} | ${rate} | ${rss} MiB | ${snap_rss} MiB | equal ($truth), in 1 version |")
done

{
  echo
  echo "## One transaction larger than memory, $mode table ($(date -u +%Y-%m-%d), $(git rev-parse --short HEAD))"
  echo
  echo "Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo). Command: \`SCALE=$scale MEMORY=$memory MODE=$mode bench/large_txn.sh\`."
  echo "pgbench accounts as a \`$mode\` table (mirrors merge by deletion vectors); ONE \`UPDATE pgbench_accounts SET abalance = abalance + 1\`, then \`tributary run --once\` under \`[runtime] memory = \"$memory\"\`."
  [ "$baseline" = 0 ] || echo "Baseline: \`spill_after = \"64GiB\"\` (the transaction held in memory, as before spilling existed)."
  echo
  echo "Checked: count and sum of balances against Postgres (for a changelog, of each account's last change)."
  echo
  echo "| run | rows in the transaction | UPDATE in Postgres (ms) | run --once (ms) | rows/s | peak RSS | peak RSS of the snapshot | table vs Postgres |"
  echo "|---|---|---|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
} >>BENCHMARKS.md
echo "[bench] appended to BENCHMARKS.md" >&2
