#!/usr/bin/env bash
# Smoke test of the monitoring setup, end to end, with no Docker:
#
#   1. builds (debug) and starts `target/debug/resilient-qa --demo` on a free loopback port,
#      with a private redis-server on a free port (or an unreachable Redis when there is
#      no redis-server: the service starts anyway, qa_redis_up is 0);
#   2. writes a temporary prometheus.yml from config/prometheus/prometheus.yml: same jobs
#      and rule files (config/prometheus/rules/*.yml), the targets replaced by the loopback
#      ports, scrape and evaluation every 2 s;
#   3. starts `prometheus` on a free port with its TSDB in a temporary directory;
#   4. asks questions all along, and polls the Prometheus HTTP API until
#        - /api/v1/targets: the resilient-qa target is healthy ("up"),
#        - /api/v1/rules:   every rule group of the repository is loaded, evaluated, and
#                           every rule in it has health "ok",
#        - /api/v1/query:   qa_requests_total returns samples with answers counted, and the
#                           recording rule qa:requests:rate5m a value above 0,
#        - /api/v1/query:   every query of config/grafana/dashboards/*.json runs without error
#      or until SMOKE_TIMEOUT_SECS (default 60) have passed.
#
# Prints a short report. Exit 0 when everything held, 1 otherwise (with the logs' tails).
# Everything it starts is stopped on any exit; the temporary directory is removed (kept
# when SMOKE_KEEP_TMP=1). Needs: cargo, prometheus, python3 (scripts/install-deps.sh
# installs prometheus and redis-server).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo="$PWD"

timeout_secs="${SMOKE_TIMEOUT_SECS:-60}"
interval="2s"

say() { printf 'smoke: %s\n' "$*"; }
die() { printf 'smoke: FAIL: %s\n' "$*" >&2; exit 1; }

for tool in cargo prometheus python3 curl; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found (run scripts/install-deps.sh)"
done

tmp="$(mktemp -d "${TMPDIR:-/tmp}/prometheus-smoke.XXXXXX")"
pids=()
status=1

cleanup() {
    local pid
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ "$status" -ne 0 ]; then
        for log in "$tmp"/*.log; do
            [ -s "$log" ] || continue
            printf '\n----- last lines of %s -----\n' "$(basename "$log")" >&2
            tail -n 20 "$log" >&2
        done
    fi
    if [ "${SMOKE_KEEP_TMP:-0}" = 1 ]; then
        say "kept $tmp"
    else
        rm -rf "$tmp"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits until a URL answers 200, while the process is alive.
wait_http() {
    local url="$1" pid="$2" what="$3" secs="$4" i
    for i in $(seq 1 $((secs * 10))); do
        if curl -fsS -m 1 -o /dev/null "$url" 2>/dev/null; then
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || die "$what exited during start-up"
        sleep 0.1
    done
    die "$what did not answer $url within ${secs}s"
}

started=$SECONDS

# ---------------------------------------------------------------- build
say "cargo build --bin resilient-qa (debug)"
cargo build --quiet --bin resilient-qa
binary="$repo/target/debug/resilient-qa"
[ -x "$binary" ] || die "$binary not built"

# ---------------------------------------------------------------- redis
if command -v redis-server >/dev/null 2>&1; then
    redis_port="$(free_port)"
    redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
        --dir "$tmp" >"$tmp/redis.log" 2>&1 &
    pids+=("$!")
    redis_url="redis://127.0.0.1:$redis_port"
    for _ in $(seq 1 50); do
        (exec 3<>"/dev/tcp/127.0.0.1/$redis_port") 2>/dev/null && break
        sleep 0.1
    done
    say "redis-server on 127.0.0.1:$redis_port"
else
    redis_url="redis://127.0.0.1:1"
    say "no redis-server: Redis is unreachable for this run (qa_redis_up 0)"
fi

# ---------------------------------------------------------------- the service
qa_port="$(free_port)"
LISTEN_ADDR="127.0.0.1:$qa_port" \
REDIS_URL="$redis_url" \
RUST_LOG=warn \
LOG_FORMAT=json \
QA__SERVER__SHUTDOWN_GRACE_SECS=2 \
    "$binary" --demo >"$tmp/resilient-qa.log" 2>&1 &
qa_pid=$!
pids+=("$qa_pid")
wait_http "http://127.0.0.1:$qa_port/healthz" "$qa_pid" "resilient-qa" 30
say "resilient-qa --demo on 127.0.0.1:$qa_port"

# ---------------------------------------------------------------- prometheus
prom_port="$(free_port)"
python3 - "$repo/config/prometheus/prometheus.yml" "$tmp/prometheus.yml" \
    "127.0.0.1:$qa_port" "127.0.0.1:$prom_port" "$interval" <<'PY'
import re, sys
src, dst, qa_target, prom_target, interval = sys.argv[1:]
text = open(src).read()
replacements = [
    # (pattern, replacement, what)
    (r'(?m)^(\s*scrape_interval:\s*)\S+', r'\g<1>' + interval, "global scrape_interval"),
    (r'(?m)^(\s*evaluation_interval:\s*)\S+', r'\g<1>' + interval, "global evaluation_interval"),
    (r'resilient-qa:8080', qa_target, "the resilient-qa target"),
    (r'localhost:9090', prom_target, "the prometheus target"),
]
for pattern, repl, what in replacements:
    text, n = re.subn(pattern, repl, text)
    if n == 0:
        sys.exit(f"prometheus.yml: {what} not found; update scripts/prometheus-smoke.sh")
if "rules/*.yml" not in text:
    sys.exit("prometheus.yml does not load rules/*.yml")
open(dst, "w").write(text)
PY
# rule_files are relative to the config file: rules/*.yml are the repository's.
ln -s "$repo/config/prometheus/rules" "$tmp/rules"
promtool check config "$tmp/prometheus.yml" >"$tmp/promtool.log" 2>&1 \
    || { cat "$tmp/promtool.log" >&2; die "the generated prometheus.yml does not check"; }

prometheus \
    --config.file="$tmp/prometheus.yml" \
    --storage.tsdb.path="$tmp/data" \
    --web.listen-address="127.0.0.1:$prom_port" \
    --log.level=warn >"$tmp/prometheus.log" 2>&1 &
prom_pid=$!
pids+=("$prom_pid")
wait_http "http://127.0.0.1:$prom_port/-/ready" "$prom_pid" "prometheus" 30
say "prometheus on 127.0.0.1:$prom_port (scrape and evaluation every $interval)"

# ---------------------------------------------------------------- poll
set +e
python3 - "http://127.0.0.1:$prom_port" "http://127.0.0.1:$qa_port" "$timeout_secs" \
    "$repo" <<'PY'
import glob, json, math, os, re, sys, threading, time, urllib.parse, urllib.request

prom, service, timeout, repo = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
JOB = "resilient-qa"
deadline = time.monotonic() + timeout
stop = threading.Event()
asked = {"ok": 0, "failed": 0}

def get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.load(resp)

def query(expr):
    return get(f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))

def asker():
    """Questions all along, so the counters move between scrapes."""
    questions = ["如何退货?", "Where is my order?", "Do you ship to Canada?"]
    n = 0
    while not stop.is_set():
        n += 1
        q = questions[n % len(questions)] if n % 2 else f"smoke question {n}"
        req = urllib.request.Request(
            f"{service}/ask", data=json.dumps({"question": q}).encode(),
            headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                json.load(resp)
            asked["ok"] += 1
        except Exception:
            asked["failed"] += 1
        stop.wait(0.3)

threading.Thread(target=asker, daemon=True).start()

# The repository's rule groups, and the dashboards' queries with Grafana's variables set.
groups_expected = set()
for path in glob.glob(os.path.join(repo, "config/prometheus/rules/*.yml")):
    groups_expected |= set(re.findall(r"(?m)^\s*- name:\s*[\"']?([^\"'\n]+?)[\"']?\s*$", open(path).read()))
dashboard_queries = []
for path in sorted(glob.glob(os.path.join(repo, "config/grafana/dashboards/*.json"))):
    def walk(v, title):
        if isinstance(v, dict):
            title = v.get("title", title)
            if isinstance(v.get("expr"), str):
                dashboard_queries.append((os.path.basename(path), title, v["expr"]))
            for k, c in v.items():
                walk(c, title)
        elif isinstance(v, list):
            for c in v:
                walk(c, title)
    walk(json.load(open(path)), "")
def grafana_vars(expr):
    for var, value in (("$__rate_interval", "1m"), ("$__interval", "15s"), ("$__range", "5m"),
                       ("$job", JOB), ("$instance", ".*")):
        expr = expr.replace(var, value)
    return expr

checks = {"target": False, "rules": False, "requests": False, "recording": False, "dashboard": False}
detail = {k: "not yet" for k in checks}

while True:
    try:
        targets = get(f"{prom}/api/v1/targets")["data"]["activeTargets"]
        mine = [t for t in targets if t["labels"].get("job") == JOB]
        health = [t["health"] for t in mine]
        checks["target"] = bool(mine) and all(h == "up" for h in health)
        errors = [t.get("lastError") for t in mine if t.get("lastError")]
        detail["target"] = (f"{JOB} {', '.join(t['scrapeUrl'] for t in mine)}: {health}" if mine else f"{JOB}: no target") + (f" {errors}" if errors else "")

        groups = get(f"{prom}/api/v1/rules")["data"]["groups"]
        loaded = {g["name"]: g for g in groups}
        missing = groups_expected - set(loaded)
        bad, unevaluated, n_rules = [], [], 0
        for g in groups:
            if g.get("lastEvaluation", "0001").startswith("0001"):
                unevaluated.append(g["name"])
            for r in g["rules"]:
                n_rules += 1
                if r.get("health") != "ok":
                    bad.append(f"{r['name']}: {r.get('health')} {r.get('lastError', '')}")
        checks["rules"] = bool(groups) and not missing and not bad and not unevaluated
        if checks["rules"]:
            detail["rules"] = f"{len(groups)} groups evaluated, {n_rules} rules, all health ok"
        else:
            detail["rules"] = "; ".join(x for x in (
                missing and f"groups not loaded: {sorted(missing)}",
                unevaluated and f"groups not evaluated yet: {unevaluated}",
                bad and f"{len(bad)} rules not ok, e.g. {bad[:3]}",
                not groups and "no rule groups loaded") if x)

        res = query(f'qa_requests_total{{job="{JOB}"}}')["data"]["result"]
        total = sum(float(s["value"][1]) for s in res)
        checks["requests"] = len(res) > 0 and total > 0
        by_source = {s["metric"].get("source"): int(float(s["value"][1])) for s in res}
        detail["requests"] = f"{len(res)} series, {int(total)} answers {by_source}"

        res = query(f'qa:requests:rate5m{{job="{JOB}"}}')["data"]["result"]
        value = float(res[0]["value"][1]) if res else float("nan")
        ratio = query(f'qa:success:ratio_rate5m{{job="{JOB}"}}')["data"]["result"]
        ratio_value = float(ratio[0]["value"][1]) if ratio else float("nan")
        checks["recording"] = value > 0 and not math.isnan(ratio_value)
        detail["recording"] = f"qa:requests:rate5m = {value:.3f}/s, qa:success:ratio_rate5m = {ratio_value:.3f}"

        if checks["target"] and not checks["dashboard"]:
            failed = []
            for file, title, expr in dashboard_queries:
                try:
                    r = query(grafana_vars(expr))
                    if r.get("status") != "success":
                        failed.append(f"{title}: {r}")
                except Exception as e:
                    body = getattr(e, "read", lambda: b"")().decode(errors="replace")
                    failed.append(f"{file} {title!r}: {expr}: {e} {body}")
            checks["dashboard"] = bool(dashboard_queries) and not failed
            detail["dashboard"] = (f"{len(dashboard_queries)} queries ran" if checks["dashboard"]
                                   else "; ".join(failed) or "no dashboard queries")
            if failed:
                break  # a query that does not parse will not parse later either
    except Exception as e:
        detail["error"] = f"{type(e).__name__}: {e}"

    if all(checks.values()) or time.monotonic() > deadline:
        break
    time.sleep(1)

stop.set()
try:
    alerts = get(f"{prom}/api/v1/alerts")["data"]["alerts"]
    alert_text = ", ".join(f"{a['labels']['alertname']} ({a['state']})" for a in alerts) or "none"
except Exception as e:
    alert_text = f"? ({e})"

ok = all(checks.values())
print()
print(f"prometheus smoke test: {'PASS' if ok else 'FAIL'}")
for name in checks:
    print(f"  [{'ok' if checks[name] else 'FAIL'}] {name:9} {detail[name]}")
if "error" in detail and not ok:
    print(f"  last error: {detail['error']}")
print(f"  questions asked: {asked['ok']} answered, {asked['failed']} failed")
print(f"  alerts pending or firing (informational): {alert_text}")
sys.exit(0 if ok else 1)
PY
status=$?
set -e
say "done in $((SECONDS - started))s"
exit "$status"
