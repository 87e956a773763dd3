#!/usr/bin/env bash
# The project's test command (the one the README gives): installs what the tests need,
# then runs every test target with cargo-nextest, or `cargo test` where nextest is absent.
# Extra arguments go to the runner, e.g.  ./scripts/test.sh -E 'test(cache)'  (nextest)
# or  ./scripts/test.sh cache  (cargo test filter). Exits with the runner's status.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

"./scripts/install-deps.sh"

status=0
if cargo nextest --version >/dev/null 2>&1; then
    echo "==> cargo nextest run --all-targets --no-fail-fast $*"
    cargo nextest run --all-targets --no-fail-fast "$@" || status=$?
else
    echo "==> cargo-nextest not found; cargo test --all-targets --no-fail-fast $*"
    cargo test --all-targets --no-fail-fast "$@" || status=$?
fi
exit "$status"
