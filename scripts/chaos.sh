#!/usr/bin/env bash
# Chaos suite: builds the release binaries, then runs examples/chaos.rs, which starts a
# private redis-server, upstream-sim and resilient-qa per scenario on free 127.0.0.1
# ports, drives 50 looping clients (streaming ones in stream_cut and stream_hang),
# injects one fault at a time and writes docs/CHAOS.md.
#
#   scripts/chaos.sh                         # every scenario (about 3 minutes + the build)
#   scripts/chaos.sh --quick                 # shorter phases
#   scripts/chaos.sh --scenario primary_down # one scenario (repeatable, or a,b,c)
#
# Exit code: 0 every check passed, 1 a check failed, 2 bad usage or setup.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v redis-server >/dev/null 2>&1; then
    echo "chaos: redis-server not found on PATH; run scripts/install-deps.sh" >&2
    exit 2
fi

cargo build --release --bins
cargo build --release --example chaos
export CHAOS_COMMAND="scripts/chaos.sh${*:+ $*}"
exec cargo run --quiet --release --example chaos -- "$@"
