#!/usr/bin/env bash
# Postgres → Delta (local disk): change rows/s of a pgbench backlog beside the
# pg_recvlogical drain rate of the same slot contents (the limit), and end-to-end
# latency (Postgres commit → Delta commit) at a steady pgbench rate. Needs the local
# stack (infra/up.sh). Appends a section to BENCHMARKS.md.
#
#   bench/postgres.sh                      # release build
#   PROFILE=dev bench/postgres.sh          # the test build
#   SCALE=10 SECONDS_LOAD=30 RATE=500 bench/postgres.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source infra/env.sh
profile=${PROFILE:-release}
scale=${SCALE:-10}
load=${SECONDS_LOAD:-30}
rate=${RATE:-500}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tributary/target}
# Build through the test/bench targets: building the binary alone unifies features
# without the dev-dependencies and would compile every dependency a second time.
if [ "$profile" = dev ]; then
  cargo test --locked --no-run >/dev/null 2>&1
else
  cargo bench --locked --no-run --bench sink >/dev/null 2>&1
fi
dir_profile=$([ "$profile" = dev ] && echo debug || echo "$profile")
bin="$CARGO_TARGET_DIR/$dir_profile/tributary"
pg=/usr/lib/postgresql/15/bin
base="$TRIBUTARY_PG_DSN"
db=bench_pg
dsn="${base/dbname=postgres/dbname=$db}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
psql() { "$pg/psql" -X -q -At -v ON_ERROR_STOP=1 "$@"; }

drop_all() {
  psql "$base" -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name LIKE 'bench\_%'" >/dev/null
  psql "$base" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)"
}
drop_all
psql "$base" -c "CREATE DATABASE $db"
"$pg/pgbench" -i -s "$scale" -q "$dsn" >/dev/null 2>&1
tables='"pgbench_accounts", "pgbench_tellers", "pgbench_branches", "pgbench_history"'
psql "$dsn" -c "CREATE PUBLICATION bench_pub FOR TABLE pgbench_accounts, pgbench_tellers, pgbench_branches, pgbench_history"
for s in bench_recv bench_log bench_mirror bench_cow bench_recv2; do
  psql "$dsn" -c "SELECT pg_create_logical_replication_slot('$s', 'pgoutput')" >/dev/null
done

pipeline() { # name slot mode-of-the-three-balance-tables [merge]
  {
    printf 'name = "%s"\n[source]\nkind = "postgres"\ndsn = "%s"\npublication = "bench_pub"\n' "$1" "$dsn"
    printf 'slot = "%s"\nsnapshot = false\ntables = [%s]\n[sink]\nuri = "%s/%s"\n' "$2" "$tables" "$work" "$1"
    printf '[runtime]\ncache_dir = "%s/%s-cache"\n' "$work" "$1"
    for t in pgbench_accounts pgbench_tellers pgbench_branches; do
      printf '[[tables]]\nname = "%s"\nfrom = "public.%s"\nmode = "%s"\n' "$t" "$t" "$3"
      if [ -n "${4:-}" ]; then printf 'merge = "%s"\n' "$4"; fi
    done
    printf '[[tables]]\nname = "pgbench_history"\nfrom = "public.pgbench_history"\nmode = "changelog"\n'
  } >"$work/$1.toml"
  echo "$work/$1.toml"
}
now() { date +%s.%N; }

# --- a backlog: pgbench with no consumer -----------------------------------------------
start_lsn=$(psql "$dsn" -c "SELECT pg_current_wal_lsn()")
"$pg/pgbench" -T "$load" -c 4 -j 2 -n "$dsn" >"$work/pgbench.log" 2>&1
end_lsn=$(psql "$dsn" -c "SELECT pg_current_wal_lsn()")
txns=$(psql "$dsn" -c "SELECT count(*) FROM pgbench_history")
changes=$((txns * 4)) # three updates and one insert per pgbench transaction
wal_mb=$(psql "$dsn" -c "SELECT round(pg_wal_lsn_diff('$end_lsn', '$start_lsn') / 1048576.0, 1)")

t0=$(now)
"$pg/pg_recvlogical" -d "$dsn" --slot bench_recv --start -o proto_version=1 \
  -o publication_names=bench_pub -E "$end_lsn" -f /dev/null
t_recv=$(awk "BEGIN{printf \"%.2f\", $(now) - $t0}")

t0=$(now)
"$bin" run "$(pipeline bench_log bench_log changelog)" --once >"$work/log.out" 2>"$work/log.err"
t_log=$(awk "BEGIN{printf \"%.2f\", $(now) - $t0}")

t0=$(now)
"$bin" run "$(pipeline bench_mirror bench_mirror mirror deletion_vectors)" --once >"$work/mirror.out" 2>"$work/mirror.err"
t_mirror=$(awk "BEGIN{printf \"%.2f\", $(now) - $t0}")

t0=$(now)
"$bin" run "$(pipeline bench_cow bench_cow mirror copy_on_write)" --once >"$work/cow.out" 2>"$work/cow.err"
t_cow=$(awk "BEGIN{printf \"%.2f\", $(now) - $t0}")

# The same drain again, with the WAL now in the page cache as it was for Tributary.
t0=$(now)
"$pg/pg_recvlogical" -d "$dsn" --slot bench_recv2 --start -o proto_version=1 \
  -o publication_names=bench_pub -E "$end_lsn" -f /dev/null
t_recv2=$(awk "BEGIN{printf \"%.2f\", $(now) - $t0}")

# --- latency at a steady rate ------------------------------------------------------------
psql "$dsn" -c "SELECT pg_create_logical_replication_slot('bench_latency', 'pgoutput')" >/dev/null
"$bin" run "$(pipeline bench_latency bench_latency changelog)" >"$work/latency.out" 2>"$work/latency.err" &
run=$!
sleep 2
"$pg/pgbench" -R "$rate" -T "$load" -c 2 -j 2 -n "$dsn" >"$work/pgbench-rate.log" 2>&1
sleep 3
kill -INT "$run"
wait "$run" || true
latency=$("$TRIBUTARY_PYTHON" bench/delta_latency.py "$work/bench_latency/pgbench_history")

rps() { awk "BEGIN{printf \"%d\", $1 / $2}"; }
{
  echo
  echo "## Postgres → Delta, $(date -u +%Y-%m-%d) @ $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo
  echo "Machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(free -g | awk '/Mem:/{print $2}') GiB, local disk; PostgreSQL 15 on the same machine."
  echo "Command: \`PROFILE=$profile SCALE=$scale SECONDS_LOAD=$load RATE=$rate bench/postgres.sh\`."
  echo "Backlog: \`pgbench -i -s $scale\`, then \`pgbench -T $load -c 4\` with no consumer: $txns transactions,"
  echo "$changes row changes, $wal_mb MiB of WAL. Every consumer reads the same slot contents from its own slot."
  echo
  echo "| consumer | seconds | changes/s |"
  echo "|---|---|---|"
  echo "| pg_recvlogical to /dev/null (the limit), first read of the WAL | $t_recv | $(rps "$changes" "$t_recv") |"
  echo "| pg_recvlogical to /dev/null, WAL cached | $t_recv2 | $(rps "$changes" "$t_recv2") |"
  echo "| tributary, 4 changelog tables | $t_log | $(rps "$changes" "$t_log") |"
  echo "| tributary, 3 mirrors (deletion vectors) + history changelog | $t_mirror | $(rps "$changes" "$t_mirror") |"
  echo "| tributary, 3 mirrors (copy-on-write MERGE) + history changelog | $t_cow | $(rps "$changes" "$t_cow") |"
  echo
  echo "Latency at a steady \`pgbench -R $rate -c 2\` for ${load}s (continuous run, default"
  echo "adaptive trigger, 250ms floor), Postgres commit time → Delta commit time of the row's version: $latency."
} | tee -a BENCHMARKS.md
drop_all >/dev/null
