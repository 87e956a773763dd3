#!/usr/bin/env bash
# Checks the README's run command: `cargo run --release -- --demo` starts, becomes ready,
# announces itself and answers a question. Bounded in time. It picks free ports for the
# service and the demo's simulator, so it runs beside other instances, and stops exactly
# the processes it started: cargo and the service it spawned, as one process group.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Two distinct free ports, held together while they are chosen.
read -r port sim_port < <(python3 -c '
import socket
a, b = socket.socket(), socket.socket()
a.bind(("127.0.0.1", 0)); b.bind(("127.0.0.1", 0))
print(a.getsockname()[1], b.getsockname()[1])')

# Compile first, so the time limit below is about starting, not building.
cargo build --release --bin resilient-qa

log=$(mktemp)
# Job control puts the background job in a process group of its own, led by $!; killing
# that group stops cargo and the binary it runs, and nothing else.
set -m
LISTEN_ADDR="127.0.0.1:$port" cargo run --release -- --demo --demo-sim-port "$sim_port" >"$log" 2>&1 &
pid=$!
set +m
stop() {
    kill -TERM -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -f "$log"
}
trap stop EXIT

for _ in $(seq 1 120); do
    curl -sf "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
    kill -0 "$pid" 2>/dev/null || { echo "the demo exited early"; tail -20 "$log"; exit 1; }
    sleep 0.5
done
answer=$(curl -sf "http://127.0.0.1:$port/ask" -H 'content-type: application/json' \
    -d '{"question":"如何退货?"}') || { echo "no answer from the demo service"; tail -20 "$log"; exit 1; }
echo "$answer"
grep -q '"source"' <<<"$answer"
grep -q "DEMO MODE" "$log" || { echo "the demo was not announced in the log"; exit 1; }
grep -q "key prefix qa:demo:v1:" "$log" || { echo "the banner does not name the demo's key prefix"; exit 1; }
grep -q "http://127.0.0.1:$sim_port/control" "$log" \
    || { echo "the banner does not give the simulator's control URL"; exit 1; }
curl -sf "http://127.0.0.1:$sim_port/control" >/dev/null \
    || { echo "the simulator's control URL does not answer"; exit 1; }
page=$(curl -sf "http://127.0.0.1:$port/") || { echo "no chat page at /"; exit 1; }
grep -q "<qa-chat" <<<"$page" || { echo "the page at / is not the chat page"; exit 1; }
curl -sf "http://127.0.0.1:$port/assets/chat.js" >/dev/null || { echo "no /assets/chat.js"; exit 1; }
grep -q "chat page:  http://127.0.0.1:$port/" "$log" \
    || { echo "the banner does not give the chat page's URL"; exit 1; }
echo "ok: cargo run --release -- --demo serves answers and the chat page"
