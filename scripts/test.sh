#!/usr/bin/env bash
# The whole test suite: installs test dependencies when missing, then
# builds every binary and runs every test of the workspace. In CI (CI=true),
# or with FUZZ_SMOKE=1, it ends with a short run of every fuzz target
# (scripts/fuzz-smoke.sh; the first run builds the fuzz workspaces, some
# ten minutes on two cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh
python3 scripts/check-unused-deps.py
python3 scripts/check-unused-pub.py
python3 scripts/check-module-cycles.py
cargo build --workspace --bins --quiet
cargo test --workspace --no-fail-fast
if [[ "${CI:-}" == "true" || "${FUZZ_SMOKE:-}" == "1" ]]; then
    FUZZ_SECONDS="${FUZZ_SECONDS:-15}" bash scripts/fuzz-smoke.sh
fi
