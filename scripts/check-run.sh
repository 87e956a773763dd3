#!/usr/bin/env bash
# Checks the README's run command: `cargo run --release -- --demo` starts, becomes ready
# and answers a question. Bounded in time; stops what it started.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log=$(mktemp)
LISTEN_ADDR="127.0.0.1:$port" cargo run --release -- --demo >"$log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; pkill -f "target/release/resilient-qa --demo" 2>/dev/null || true; rm -f "$log"' EXIT

for _ in $(seq 1 600); do
    curl -sf "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
    sleep 0.5
done
answer=$(curl -sf "http://127.0.0.1:$port/ask" -H 'content-type: application/json' \
    -d '{"question":"如何退货?"}') || { echo "no answer from the demo service"; tail -20 "$log"; exit 1; }
echo "$answer"
grep -q '"source"' <<<"$answer"
grep -q "DEMO MODE" "$log" || { echo "the demo was not announced in the log"; exit 1; }
echo "ok: cargo run --release -- --demo serves answers"
