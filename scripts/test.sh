#!/usr/bin/env bash
# The whole test suite: installs test dependencies when missing, then
# builds every binary and runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh
cargo build --workspace --bins --quiet
cargo test --workspace --no-fail-fast
