#!/usr/bin/env bash
# The quickstart: builds Tributary, runs pipelines/quickstart.toml into ./lake on the
# local disk (no services needed), then reads both tables back with DuckDB.
# It builds what the test command then reuses: the test profile (dependencies
# optimised), the same features, in $CARGO_TARGET_DIR (lib.sh), so infra/test.sh
# compiles nothing more.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_DIR"
"$INFRA_DIR/python.sh"
# `cargo build` alone would resolve features without the dev-dependencies and compile
# every dependency a second time for the tests.
cargo test --locked --no-run
bin="$CARGO_TARGET_DIR/debug/tributary"
"$bin" run pipelines/quickstart.toml --once
lake="$REPO_DIR/lake"
"$VENV/bin/python" tests/duckdb_query.py --show <<SQL
SELECT count(*) AS events, count(DISTINCT user_id) AS users, min(event_timestamp) AS first, max(event_timestamp) AS last FROM delta_scan('$lake/clickstream_raw');
SELECT window_start, page, view_count FROM delta_scan('$lake/page_views_1m') ORDER BY window_start, view_count DESC LIMIT 10;
SQL
