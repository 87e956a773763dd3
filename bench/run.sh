#!/usr/bin/env bash
# The performance benchmark of resilient-qa, in one command:
#
#   bench/run.sh            # build --release, measure (a few minutes), print the table and
#                           # rewrite the generated section of BENCHMARKS.md
#   bench/run.sh --micro    # the same, then the criterion micro-benchmarks (benches/hot_paths.rs)
#                           # whose table goes into BENCHMARKS.md too
#   bench/run.sh --scale    # instead: several instances (bench/scale.py): what the
#                           # cross-instance lease and the rate limits cost, and three
#                           # instances behind HAProxy against one
#
# It starts, on free loopback ports, a private redis-server (no persistence), the
# simulator `upstream-sim` at a fixed latency, and fresh instances of `resilient-qa`, and
# drives them with wrk (bench/wrk.lua); bench/bench.py does the measuring. Everything it
# starts is killed on exit, however it exits.
#
# Environment: BENCH_DURATION (s per measurement, default 10), BENCH_SIM_LATENCY_MS
# (default 50), BENCH_NO_WRITE=1 (leave BENCHMARKS.md alone), BENCH_KEEP=1 (keep the work
# directory with the logs and raw JSON).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
MICRO=0
SCALE=0
for arg in "$@"; do
    case "$arg" in
        --micro) MICRO=1 ;;
        --scale) SCALE=1 ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "bench/run.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
    esac
done

BENCH_TMP=$(mktemp -d "${TMPDIR:-/tmp}/qa-bench.XXXXXX")
export BENCH_TMP
BENCH_PY_PID=

cleanup() {
    local rc=$?
    trap - EXIT INT TERM HUP
    if [[ -n "$BENCH_PY_PID" ]] && kill -0 "$BENCH_PY_PID" 2>/dev/null; then
        kill -TERM "$BENCH_PY_PID" 2>/dev/null || true
        wait "$BENCH_PY_PID" 2>/dev/null || true
    fi
    # Whatever bench.py started and did not reap (it records every pid).
    if [[ -f "$BENCH_TMP/pids" ]]; then
        while read -r pid; do
            kill -KILL "$pid" 2>/dev/null || true
        done < "$BENCH_TMP/pids"
    fi
    if [[ "${BENCH_KEEP:-0}" == 1 || $rc -ne 0 ]]; then
        echo "bench: logs and raw results kept in $BENCH_TMP" >&2
    else
        rm -rf "$BENCH_TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

need() { command -v "$1" >/dev/null 2>&1; }
if ! need wrk; then
    echo "bench: installing wrk (Debian package)" >&2
    if [[ $(id -u) -eq 0 ]]; then apt-get update -qq && apt-get install -y -qq wrk >/dev/null
    else sudo apt-get update -qq && sudo apt-get install -y -qq wrk >/dev/null; fi
fi
if ! need redis-server; then
    echo "bench: installing redis-server (Debian package)" >&2
    if [[ $(id -u) -eq 0 ]]; then apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
    else sudo apt-get update -qq && sudo apt-get install -y -qq redis-server >/dev/null; fi
    # The package may start a system instance; this benchmark uses its own only.
fi
need python3 || { echo "bench: python3 is needed" >&2; exit 1; }

# 1,000 held connections plus the load generator's: raise the descriptor limit.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [[ $(ulimit -n) != unlimited && $(ulimit -n) -lt 4096 ]]; then
    echo "bench: open-file limit is $(ulimit -n); 1,000 connections need more" >&2
    exit 1
fi

echo "bench: cargo build --release --bins" >&2
cargo build --release --bins --quiet
if [[ $SCALE == 0 ]]; then
    echo "bench: cargo build --release (bench/ceiling: the strict ceiling, lto thin, 1 codegen unit)" >&2
    cargo build --release --quiet --manifest-path bench/ceiling/Cargo.toml \
        --target-dir bench/ceiling/target
fi

export BENCH_COMMAND="bench/run.sh${1:+ $*}"
if [[ $SCALE == 1 ]]; then
    command -v haproxy >/dev/null 2>&1 || [[ -x /usr/sbin/haproxy ]] \
        || "$ROOT/scripts/install-deps.sh" haproxy
    python3 "$ROOT/bench/scale.py" &
else
    python3 "$ROOT/bench/bench.py" &
fi
BENCH_PY_PID=$!
wait "$BENCH_PY_PID"
BENCH_PY_PID=

if [[ $MICRO == 1 ]]; then
    echo "bench: cargo bench --bench hot_paths -- --warm-up-time 1 --measurement-time 3" >&2
    cargo bench --bench hot_paths -- --warm-up-time 1 --measurement-time 3 \
        | tee "$BENCH_TMP/criterion.txt"
    python3 "$ROOT/bench/criterion_table.py" "$BENCH_TMP/criterion.txt"
fi
