#!/usr/bin/env bash
# The streaming and hardening benchmarks of resilient-qa, in one command:
#
#   bench/streams.sh      # build --release (binaries + examples/stream_load.rs), measure
#                         # (about 3 minutes), print the tables and rewrite the
#                         # "bench/streams.sh" section of BENCHMARKS.md
#
# bench/streams.py starts, on free loopback ports, a private redis-server, the simulator
# (50 ms latency, 16 characters every 10 ms) and fresh instances of resilient-qa, and
# drives them with examples/stream_load.rs: time to first token at a fixed rate of new
# streams, straight to the simulator and through the service; 10,000 idle streams (the
# primary stalls before its first token); a flood of oversized request heads; a 50 MB
# completion. Everything it starts is killed on exit, however it exits.
#
# Environment: BENCH_TTFT_RATE (streams/s, default 1000), BENCH_TTFT_SECS (default 5),
# BENCH_TTFT_ROUNDS (default 3), BENCH_IDLE_STREAMS (default 10000),
# BENCH_IDLE_UNIQUE_STREAMS (default 9000), BENCH_NO_WRITE=1, BENCH_KEEP=1.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
case "${1:-}" in
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    "") ;;
    *) echo "bench/streams.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
esac

BENCH_TMP=$(mktemp -d "${TMPDIR:-/tmp}/qa-streams.XXXXXX")
export BENCH_TMP
PY_PID=

cleanup() {
    local rc=$?
    trap - EXIT INT TERM HUP
    if [[ -n "$PY_PID" ]] && kill -0 "$PY_PID" 2>/dev/null; then
        kill -TERM "$PY_PID" 2>/dev/null || true
        wait "$PY_PID" 2>/dev/null || true
    fi
    if [[ -f "$BENCH_TMP/pids" ]]; then
        while read -r pid; do
            kill -KILL "$pid" 2>/dev/null || true
        done < "$BENCH_TMP/pids"
    fi
    if [[ "${BENCH_KEEP:-0}" == 1 || $rc -ne 0 ]]; then
        echo "streams: logs and raw results kept in $BENCH_TMP" >&2
    else
        rm -rf "$BENCH_TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

command -v redis-server >/dev/null 2>&1 || {
    echo "streams: redis-server is needed (scripts/install-deps.sh)" >&2; exit 1; }
command -v python3 >/dev/null 2>&1 || { echo "streams: python3 is needed" >&2; exit 1; }

# 10,000 streams hold a descriptor each in the load generator, and one (plus one upstream
# connection per question) in the service.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [[ $(ulimit -n) != unlimited && $(ulimit -n) -lt 16384 ]]; then
    echo "streams: open-file limit is $(ulimit -n); 10,000 streams need more" >&2
    exit 1
fi

echo "streams: cargo build --release --bins --example stream_load" >&2
cargo build --release --bins --example stream_load --quiet

export BENCH_COMMAND="bench/streams.sh"
python3 "$ROOT/bench/streams.py" &
PY_PID=$!
wait "$PY_PID"
PY_PID=
