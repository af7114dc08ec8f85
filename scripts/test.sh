#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need
# (real PostgreSQL, MariaDB, NATS servers; SQLite), checks formatting, lints,
# the dependency direction, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-test-deps.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ferry-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== dependency direction"
bash scripts/check-deps.sh
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== cargo test"
cargo test --workspace --no-fail-fast 2>&1 | tee "${TMPDIR:-/tmp}/ferry-test.log"
status=${PIPESTATUS[0]}
passed=$(grep -E '^test result:' "${TMPDIR:-/tmp}/ferry-test.log" | awk '{p+=$4; f+=$6} END {print p+0}')
failed=$(grep -E '^test result:' "${TMPDIR:-/tmp}/ferry-test.log" | awk '{p+=$4; f+=$6} END {print f+0}')
echo "ferry tests: ${passed} passed, ${failed} failed"
exit "$status"
