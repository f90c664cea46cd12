#!/usr/bin/env bash
# A short fuzzing run of every cargo-fuzz target, for CI: each target runs
# for FUZZ_SECONDS (default 20) from its saved corpus, and any crash fails
# the script. Long local runs: see RELIABILITY.md ("Hostile input").
#
# Needs cargo-fuzz (installed here if missing) and a nightly compiler, or
# the stable one with RUSTC_BOOTSTRAP=1 (what this script uses).
# No sanitizer (-s none): the fuzzed code is safe Rust, and AddressSanitizer
# would only slow the build and the run.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-20}"
# One target dir for both fuzz workspaces, so they share built crates.
target_dir="${FUZZ_TARGET_DIR:-$PWD/target/fuzz}"

if ! cargo fuzz --help >/dev/null 2>&1; then
    cargo install cargo-fuzz --version 0.13.2 --locked
fi
export RUSTC_BOOTSTRAP=1

run() {
    local dir=$1 target=$2
    shift 2
    echo "== fuzz $dir $target for ${seconds}s"
    (cd "$dir" && cargo fuzz run -s none --target-dir "$target_dir" "$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 "$@")
}

run engine/fuzz smtp_command
# Inputs past 64 KiB reach the reader's long-line path.
run engine/fuzz data_reader -max_len=262144
run engine/fuzz admin_request
run engine/fuzz config_load
run bounces/fuzz parse
echo "fuzz-smoke: all targets ran ${seconds}s without a crash"
