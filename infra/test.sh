#!/usr/bin/env bash
# The one test command: brings the local stack up, runs every test, brings it down.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# The build directory the quickstart and up.sh use (CARGO_TARGET_DIR), so nothing is
# compiled twice.
source "$here/lib.sh"
"$here/up.sh"
trap '"$here/down.sh"' EXIT
source "$here/env.sh"
cd "$(dirname "$here")"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --no-fail-fast "$@"
else
  cargo test --locked --no-fail-fast "$@"
fi
