#!/usr/bin/env bash
# Runs every libFuzzer target in fuzz/ for SECONDS each (default 30). Needs a nightly
# toolchain (sanitizer instrumentation); cargo-fuzz is installed into the cache on
# first use. Without nightly it says so and exits 0: the bounded mutation tests in
# `cargo test` (e.g. source::postgres::pgoutput::tests) still cover the decoders.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
seconds=${1:-30}
if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  log "no nightly toolchain: skipping libFuzzer runs (the mutation tests in cargo test still run)"
  exit 0
fi
fuzz_root="$TRIBUTARY_CACHE/cargo-fuzz"
if [ ! -x "$fuzz_root/bin/cargo-fuzz" ]; then
  log "installing cargo-fuzz (one-off)"
  cargo install cargo-fuzz --locked --root "$fuzz_root" >"$TRIBUTARY_CACHE/cargo-fuzz-install.log" 2>&1 \
    || { tail -n 30 "$TRIBUTARY_CACHE/cargo-fuzz-install.log" >&2; die "cargo-fuzz install failed"; }
fi
export PATH="$fuzz_root/bin:$PATH"
export CARGO_TARGET_DIR="$TRIBUTARY_CACHE/fuzz-target"
cd "$REPO_DIR/fuzz"
for target in $(cargo +nightly fuzz list); do
  log "fuzzing $target for ${seconds}s"
  mkdir -p "$TRIBUTARY_CACHE/fuzz-corpus/$target"
  cargo +nightly fuzz run "$target" "$TRIBUTARY_CACHE/fuzz-corpus/$target" -- \
    -max_total_time="$seconds" -max_len=4096 -print_final_stats=1 2>&1 | tail -n 12
done
