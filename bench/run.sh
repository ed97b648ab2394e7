#!/usr/bin/env bash
# Throughput benchmarks of the release binary, appended to BENCHMARKS.md with the
# command, the machine and the commit. Not a test: numbers vary with the machine.
#
#   bench/run.sh              # 2M events
#   EVENTS=500000 bench/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# Builds share the persistent target dir the tests and CI use (a cold one takes ~34 min).
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tributary/target}
events=${EVENTS:-2000000}
# Through the bench target: a plain binary build unifies features without the
# dev-dependencies and would compile every dependency a second time.
cargo bench --locked --no-run --bench sink >/dev/null 2>&1
bin="$CARGO_TARGET_DIR/release/tributary"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# variant NAME SED-SCRIPT: the quickstart with $events events into a fresh folder.
variant() {
  sed -e "s/^events = 200000 .*/events = $events/" -e "s#^uri = \"./lake\".*#uri = \"$work/$1\"#" \
    -e "${2:-}" pipelines/quickstart.toml >"$work/$1.toml"
}
variant full ""
# Raw table only: drop everything from [[aggregates]] on.
variant raw '/^\[\[aggregates\]\]/,$d'
# Aggregate only: drop the [[tables]] entry.
variant agg '/^\[\[tables\]\]/,/^mode/d'

rows=()
for v in raw agg full; do
  /usr/bin/time -f '%e %M' -o "$work/time" "$bin" run "$work/$v.toml" --once >"$work/$v.out" 2>"$work/$v.err"
  read -r secs kb <"$work/time"
  rate=$(python3 -c "print(f'{$events/$secs:,.0f}')")
  rows+=("| $v | $events | $secs | $rate | $((kb / 1024)) |")
done

{
  echo
  echo "## Generator → Delta (local disk), $(date -u +%Y-%m-%d) @ $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo
  echo "Machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(free -g | awk '/Mem:/{print $2}') GiB."
  echo "Command: \`EVENTS=$events bench/run.sh\` (release build; pipelines/quickstart.toml with"
  echo "max_rows 100000). \`raw\` writes clickstream_raw only, \`agg\` page_views_1m only, \`full\` both;"
  echo "\`raw\` is the baseline the others are compared to."
  echo
  echo "| variant | events | seconds | events/s | peak RSS MiB |"
  echo "|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
} | tee -a BENCHMARKS.md
