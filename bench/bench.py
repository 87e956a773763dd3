#!/usr/bin/env python3
"""The load benchmark of resilient-qa, driven by bench/run.sh (which builds first).

Starts a private redis-server, the simulator at a fixed latency and fresh instances of
the service, all on free loopback ports; measures with wrk (bench/wrk.lua); prints the
table and rewrites the generated section of BENCHMARKS.md. Standard library only.

Environment: BENCH_DURATION (seconds per load measurement, default 10),
BENCH_SIM_LATENCY_MS (default 50), BENCH_TMP (work directory, made by run.sh),
BENCH_NO_WRITE=1 (print only, leave BENCHMARKS.md alone).
"""

import datetime
import http.client
import json
import os
import platform
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TMP = os.environ.get("BENCH_TMP") or tempfile.mkdtemp(prefix="qa-bench-")
DURATION = int(os.environ.get("BENCH_DURATION", "10"))
SIM_LATENCY_MS = int(os.environ.get("BENCH_SIM_LATENCY_MS", "50"))
TARGET_DIR = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
if not os.path.isabs(TARGET_DIR):
    TARGET_DIR = os.path.join(ROOT, TARGET_DIR)
QA_BIN = os.path.join(TARGET_DIR, "release", "resilient-qa")
SIM_BIN = os.path.join(TARGET_DIR, "release", "upstream-sim")
WRK_LUA = os.path.join(ROOT, "bench", "wrk.lua")
# The strict ceiling (bench/ceiling): built by run.sh into its own target folder.
CEILING_BIN = os.path.join(ROOT, "bench", "ceiling", "target", "release", "qa-ceiling")
BENCHMARKS_MD = os.path.join(ROOT, "BENCHMARKS.md")
BEGIN = "<!-- bench/run.sh: generated section begin -->"
END = "<!-- bench/run.sh: generated section end -->"

# Closed-loop throughput runs: one wrk thread, this many keep-alive connections.
THROUGHPUT_CONNS = 64
THROUGHPUT_THREADS = 1
MISS_RATES = (200, 1000)
ROUNDS = 2

PROCS = []  # every process started, killed at exit


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes

def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(name, argv, env=None):
    out = open(os.path.join(TMP, f"{name}.log"), "wb")
    p = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL)
    PROCS.append(p)
    with open(os.path.join(TMP, "pids"), "a") as f:
        f.write(f"{p.pid}\n")
    return p


def stop(p, sig=signal.SIGTERM, wait=5.0):
    if p.poll() is not None:
        return
    try:
        p.send_signal(sig)
        p.wait(timeout=wait)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def stop_all():
    for p in reversed(PROCS):
        try:
            stop(p, signal.SIGKILL, 2.0)
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


def hreq(port, method, path, body=None, headers=None, timeout=5.0):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def poll_ready(port, path, deadline_s, interval_s=0.001):
    """Raw-socket GET every ~1 ms until a 200; returns seconds waited (or None)."""
    req = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
    start = time.perf_counter()
    while time.perf_counter() - start < deadline_s:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
                s.sendall(req)
                head = s.recv(64)
                if head.startswith(b"HTTP/1.1 200"):
                    return time.perf_counter() - start
        except OSError:
            pass
        time.sleep(interval_s)
    return None


def start_redis(extra_args=()):
    """A private redis-server (no persistence) on a free port, answering PING: (process,
    port)."""
    port = free_port()
    p = spawn("redis", ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                        "--save", "", "--appendonly", "no", "--dir", TMP,
                        "--loglevel", "warning", *extra_args])
    deadline = time.time() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return p, port
        except OSError:
            pass
        if time.time() > deadline or p.poll() is not None:
            raise SystemExit(f"redis-server did not start; see {TMP}/redis.log")
        time.sleep(0.01)


def start_sim(extra_args=()):
    """upstream-sim at SIM_LATENCY_MS on a free port, serving: (process, port)."""
    port = free_port()
    p = spawn("sim", [SIM_BIN, "--listen", f"127.0.0.1:{port}",
                      "--latency-ms", str(SIM_LATENCY_MS), *extra_args])
    if poll_ready(port, "/v1/models", 10.0) is None:
        raise SystemExit(f"upstream-sim did not start; see {TMP}/sim.log")
    return p, port


def rss_kib(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


class Service:
    """One fresh resilient-qa instance; `ready_ms` is process start to the first
    200 from GET /readyz, polled every ~1 ms."""

    def __init__(self, name, redis_port, sim_port, extra_env=None):
        self.port = free_port()
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("QA__") and k not in ("OPENAI_API_KEY", "ADMIN_TOKEN")}
        env.update({
            "LISTEN_ADDR": f"127.0.0.1:{self.port}",
            "REDIS_URL": f"redis://127.0.0.1:{redis_port}",
            "OPENAI_BASE_URL": f"http://127.0.0.1:{sim_port}/v1",
            "RUST_LOG": os.environ.get("BENCH_RUST_LOG", "info"),
            "LOG_FORMAT": "json",
        })
        env.update(extra_env or {})
        self.env_shown = extra_env or {}
        start = time.perf_counter()
        self.proc = spawn(f"qa-{name}", [QA_BIN], env)
        waited = poll_ready(self.port, "/readyz", 10.0)
        if waited is None:
            raise SystemExit(f"service {name} not ready in 10 s; see {TMP}/qa-{name}.log")
        self.ready_ms = (time.perf_counter() - start) * 1000.0
        self.name = name
        _, body = hreq(self.port, "GET", "/readyz")
        self.readyz = json.loads(body)

    @property
    def pid(self):
        return self.proc.pid

    def ask(self, question):
        status, body = hreq(self.port, "POST", "/ask",
                            json.dumps({"question": question}).encode(),
                            {"Content-Type": "application/json"})
        return status, json.loads(body)

    def ask_stream(self, question):
        """A streamed /ask: (status, content type, [(event, data)])."""
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5.0)
        try:
            c.request("POST", "/ask", json.dumps({"question": question}).encode(),
                      {"Content-Type": "application/json", "Accept": "text/event-stream"})
            r = c.getresponse()
            body = r.read().decode()
            events = []
            for block in body.split("\n\n"):
                ev = data = None
                for line in block.splitlines():
                    if line.startswith("event:"):
                        ev = line[6:].strip()
                    elif line.startswith("data:"):
                        data = line[5:].strip()
                if ev:
                    events.append((ev, json.loads(data) if data else None))
            return r.status, r.getheader("Content-Type"), events
        finally:
            c.close()

    def metrics(self):
        _, body = hreq(self.port, "GET", "/metrics")
        return parse_prometheus(body.decode())

    def stop(self):
        stop(self.proc)


# ---------------------------------------------------------------- metrics

LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)')
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text):
    """{(name, frozenset(labels)): value}"""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = LINE.match(line)
        if not m:
            continue
        labels = frozenset(LABEL.findall(m.group(2) or ""))
        try:
            out[(m.group(1), labels)] = float(m.group(3))
        except ValueError:
            pass
    return out


def metric(snapshot, name, **labels):
    want = set(labels.items())
    return sum(v for (n, ls), v in snapshot.items() if n == name and want <= set(ls))


def histogram(before, after, name, **labels):
    """Cumulative buckets [(le, count)] of after - before, and the count."""
    want = set(labels.items())
    buckets = {}
    for (n, ls), v in after.items():
        if n != name + "_bucket" or not want <= set(ls):
            continue
        le = dict(ls)["le"]
        key = (n, ls)
        buckets[le] = buckets.get(le, 0.0) + v - before.get(key, 0.0)
    bs = sorted(((float("inf") if le == "+Inf" else float(le)), c) for le, c in buckets.items())
    count = bs[-1][1] if bs else 0.0
    return bs, count


def hist_quantile(q, buckets):
    """Prometheus' histogram_quantile: linear inside the bucket that holds the rank."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    prev_le, prev_c = 0.0, 0.0
    for le, c in buckets:
        if c >= rank:
            if le == float("inf"):
                return prev_le  # the highest finite bound: a floor, not an estimate
            if c == prev_c:
                return le
            return prev_le + (le - prev_le) * (rank - prev_c) / (c - prev_c)
        prev_le, prev_c = le, c
    return prev_le


# ---------------------------------------------------------------- CPU accounting

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_busy_ticks():
    """Busy ticks of the whole machine (all CPUs), and their count."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal
    return v[0] + v[1] + v[2] + v[5] + v[6] + v[7]


def proc_ticks(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime
    except (OSError, IndexError, ValueError):
        return 0


def ours_ticks():
    return sum(proc_ticks(p.pid) for p in PROCS if p.poll() is None)


def children_ticks():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (ru.ru_utime + ru.ru_stime) * CLK_TCK


# ---------------------------------------------------------------- wrk

def wrk(label, url, mode, conns, rate=0, threads=1, duration=None, tag="x", watch=None):
    """One wrk run. `watch`: {name: pid} whose CPU time is reported (percent of one
    CPU, and microseconds per request)."""
    duration = duration or DURATION
    out = os.path.join(TMP, f"wrk-{label}.json")
    env = dict(os.environ, BENCH_MODE=mode, BENCH_RATE=str(rate), BENCH_TAG=tag,
               BENCH_OUT=out, BENCH_THREADS=str(threads))
    argv = ["wrk", "-t", str(threads), "-c", str(conns), "-d", f"{duration}s",
            "--timeout", "5s", "-s", WRK_LUA, url]
    load_before = os.getloadavg()[0]
    log(f"wrk {label}: {' '.join(argv[:-3])} ... {url} (mode {mode}, rate {rate or 'max'})")
    watch = watch or {}
    w0 = {k: proc_ticks(pid) for k, pid in watch.items()}
    busy0, ours0, kids0, t0 = cpu_busy_ticks(), ours_ticks(), children_ticks(), time.time()
    p = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True)
    busy1, ours1, kids1, t1 = cpu_busy_ticks(), ours_ticks(), children_ticks(), time.time()
    w1 = {k: proc_ticks(pid) for k, pid in watch.items()}
    capacity = (t1 - t0) * CLK_TCK * (os.cpu_count() or 1)
    foreign = busy1 - busy0 - (ours1 - ours0) - (kids1 - kids0)
    if p.returncode != 0 or not os.path.exists(out):
        raise SystemExit(f"wrk {label} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    with open(out) as f:
        r = json.load(f)
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    r["label"] = label
    r["conns"] = conns
    r["threads"] = threads
    r["loadavg_before"] = load_before
    # Share of the machine's CPU time used by processes this benchmark did not start
    # (approximate: kernel work done outside our processes counts as theirs).
    r["foreign_cpu_pct"] = max(0.0, 100.0 * foreign / capacity) if capacity else 0.0
    r["wrk_cpu_pct"] = 100.0 * (kids1 - kids0) / capacity if capacity else 0.0
    r["cpu"] = {k: {"pct_of_one_cpu": 100.0 * (w1[k] - w0[k]) / CLK_TCK / (t1 - t0),
                    "us_per_request": (1e6 * (w1[k] - w0[k]) / CLK_TCK / r["requests"]
                                       if r["requests"] else None)}
                for k in watch}
    r["p50_ms"] = r["latency_us"]["p50"] / 1000.0
    r["p99_ms"] = r["latency_us"]["p99"] / 1000.0
    err = sum(r["errors"].values())
    r["error_count"] = err
    log(f"  -> {r['rps']:.0f} req/s, p50 {r['p50_ms']:.3f} ms, p99 {r['p99_ms']:.3f} ms,"
        f" errors {r['errors']}, other processes {r['foreign_cpu_pct']:.0f}% of the CPUs")
    return r


# ---------------------------------------------------------------- scenarios

def hold_connections(port, n):
    """Opens n keep-alive connections, each served one GET /healthz, and keeps them."""
    socks = []
    req = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5.0)
        s.sendall(req)
        socks.append(s)
    for s in socks:
        data = b""
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            chunk = s.recv(4096)
            if not chunk:
                raise SystemExit("a held connection was closed by the service")
            data += chunk
    return socks


def run():
    res = {"scenarios": {}, "checks": []}
    if os.environ.get("BENCH_SKIP_BUILD_CHECK") != "1":
        for b in (QA_BIN, SIM_BIN):
            if not os.access(b, os.X_OK):
                raise SystemExit(f"{b} missing: run bench/run.sh (it builds first)")

    # Redis and the simulator, private, on free loopback ports.
    redis, redis_port = start_redis(["--protected-mode", "yes"])
    _, sim_port = start_sim()
    log(f"redis on {redis_port}, upstream-sim on {sim_port} ({SIM_LATENCY_MS} ms)")
    ready_samples = []

    # 1-2. Ceiling, memory hits, Redis hits: two instances side by side (the second with
    #      the memory layer off), measured in ROUNDS interleaved rounds; the best round of
    #      each counts (a machine shared with other work only ever makes a run slower).
    a = Service("default", redis_port, sim_port)
    ready_samples.append(a.ready_ms)
    log(f"service default on {a.port}, ready in {a.ready_ms:.1f} ms, readyz {a.readyz}")
    b = Service("redis_only", redis_port, sim_port, {"QA__CACHE__MEMORY_MAX_ENTRIES": "0"})
    ready_samples.append(b.ready_ms)
    tag_mem, tag_red = f"mem{os.getpid()}", f"redis{os.getpid()}"
    q_mem, q_red = f"Where is my order? (bench {tag_mem})", f"Where is my order? (bench {tag_red})"
    status, first = a.ask(q_mem)
    res["checks"].append(f"memory scenario: first ask -> {status} source={first.get('source')}")
    status, second = a.ask(q_mem)
    res["checks"].append(f"memory scenario: second ask -> {status} source={second.get('source')}")
    status, ctype, events = a.ask_stream(q_mem)
    names = [e for e, _ in events]
    done = events[-1][1] if events and events[-1][0] == "done" else {}
    streamed = "".join(d["text"] for e, d in events if e == "delta")
    res["checks"].append(
        f"memory scenario, streamed: {status} {ctype}, events {names}, "
        f"source={done.get('source')}, deltas = done.answer: {streamed == done.get('answer')}")
    status, first = b.ask(q_red)
    res["checks"].append(f"redis scenario: first ask -> {status} source={first.get('source')}")
    second = {}
    for _ in range(200):  # the write to Redis is queued off the response path
        time.sleep(0.01)
        status, second = b.ask(q_red)
        if second.get("source") == "cache":
            break
    res["checks"].append(f"redis scenario: repeat ask -> {status} source={second.get('source')}")
    # The strict ceiling answers POST /ask with the very bytes of a memory hit.
    _, hit_body = hreq(a.port, "POST", "/ask", json.dumps({"question": q_mem}).encode(),
                       {"Content-Type": "application/json"})
    hit_file = os.path.join(TMP, "hit.json")
    with open(hit_file, "wb") as f:
        f.write(hit_body)
    strict_port = free_port()
    strict = spawn("ceiling", [CEILING_BIN, f"127.0.0.1:{strict_port}", hit_file])
    for _ in range(1000):
        try:
            socket.create_connection(("127.0.0.1", strict_port), timeout=1).close()
            break
        except OSError:
            if strict.poll() is not None:
                raise SystemExit(f"qa-ceiling did not start; see {TMP}/ceiling.log")
            time.sleep(0.01)
    res["checks"].append(f"strict ceiling: answers POST /ask with the {len(hit_body)} bytes "
                         "of a memory hit's body")
    base_a, base_b = f"http://127.0.0.1:{a.port}", f"http://127.0.0.1:{b.port}"
    base_s = f"http://127.0.0.1:{strict_port}"
    wrk("warmup_ceiling", base_a + "/healthz", "get", THROUGHPUT_CONNS, duration=2)
    wrk("warmup_memory", base_a + "/ask", "ask_same", THROUGHPUT_CONNS, duration=2, tag=tag_mem)
    wrk("warmup_redis", base_b + "/ask", "ask_same", THROUGHPUT_CONNS, duration=2, tag=tag_red)
    wrk("warmup_memory_stream", base_a + "/ask", "ask_same_stream", THROUGHPUT_CONNS,
        duration=2, tag=tag_mem)
    wrk("warmup_strict", base_s + "/ask", "ask_same", THROUGHPUT_CONNS, duration=2, tag=tag_mem)
    rounds = {"ceiling": [], "ceiling_strict": [], "memory_hit": [], "memory_hit_stream": [],
              "redis_hit": []}
    for i in range(ROUNDS):
        rounds["ceiling"].append(wrk(f"ceiling_{i}", base_a + "/healthz", "get",
                                     THROUGHPUT_CONNS, threads=THROUGHPUT_THREADS,
                                     watch={"service": a.pid}))
        rounds["ceiling_strict"].append(wrk(f"ceiling_strict_{i}", base_s + "/ask", "ask_same",
                                            THROUGHPUT_CONNS, threads=THROUGHPUT_THREADS,
                                            tag=tag_mem, watch={"ceiling": strict.pid}))
        for key, svc, base, tag, layer, mode in (
                ("memory_hit", a, base_a, tag_mem, "memory", "ask_same"),
                ("memory_hit_stream", a, base_a, tag_mem, "memory", "ask_same_stream"),
                ("redis_hit", b, base_b, tag_red, "redis", "ask_same")):
            m0 = svc.metrics()
            r = wrk(f"{key}_{i}", base + "/ask", mode, THROUGHPUT_CONNS,
                    threads=THROUGHPUT_THREADS, tag=tag,
                    watch={"service": svc.pid, "redis-server": redis.pid})
            m1 = svc.metrics()
            r["verified_hits"] = (
                metric(m1, "qa_cache_lookups_total", layer=layer, result="hit")
                - metric(m0, "qa_cache_lookups_total", layer=layer, result="hit"))
            r["answers"] = metric(m1, "qa_requests_total") - metric(m0, "qa_requests_total")
            r["ratio_same_round"] = r["rps"] / rounds["ceiling"][-1]["rps"]
            if key == "memory_hit_stream":
                r["ratio_to_memory_hit_same_round"] = r["rps"] / rounds["memory_hit"][-1]["rps"]
            rounds[key].append(r)
    a.stop()
    b.stop()
    stop(strict)
    best = {k: max(v, key=lambda r: r["rps"]) for k, v in rounds.items()}
    ceiling, mem, red = best["ceiling"], best["memory_hit"], best["redis_hit"]
    mem_stream = best["memory_hit_stream"]

    # 3. The miss path: distinct questions, fixed offered loads, against the simulator
    #    straight and through the service.
    c = Service("miss", redis_port, sim_port)
    ready_samples.append(c.ready_ms)
    sim_base = f"http://127.0.0.1:{sim_port}"
    base = f"http://127.0.0.1:{c.port}"
    # Warm both paths' connection pools a little (distinct questions too).
    wrk("warmup_miss", base + "/ask", "ask_unique", 40, rate=100, duration=2,
        tag=f"warm{os.getpid()}")
    miss = {}
    for rate in MISS_RATES:
        conns = max(40, rate // 5)
        direct = wrk(f"sim_{rate}", sim_base + "/v1/chat/completions", "sim_unique", conns,
                     rate=rate, tag=f"sim{rate}-{os.getpid()}")
        m0 = c.metrics()
        svc = wrk(f"miss_{rate}", base + "/ask", "ask_unique", conns, rate=rate,
                  tag=f"miss{rate}-{os.getpid()}", watch={"service": c.pid})
        time.sleep(0.2)
        m1 = c.metrics()
        ob, ocount = histogram(m0, m1, "qa_overhead_seconds")
        db, dcount = histogram(m0, m1, "qa_request_duration_seconds", source="primary")
        ub, ucount = histogram(m0, m1, "qa_upstream_duration_seconds", tier="primary")
        svc["answers_by_source"] = {
            s: metric(m1, "qa_requests_total", source=s) - metric(m0, "qa_requests_total", source=s)
            for s in ("cache", "primary", "secondary", "canned", "stale", "default")}
        svc["cache_hits"] = (metric(m1, "qa_cache_lookups_total", result="hit")
                             - metric(m0, "qa_cache_lookups_total", result="hit"))
        svc["coalesced"] = metric(m1, "qa_coalesced_total") - metric(m0, "qa_coalesced_total")
        svc["overhead_hist"] = {
            "count": ocount,
            "p50_ms": none_ms(hist_quantile(0.5, ob)),
            "p99_ms": none_ms(hist_quantile(0.99, ob)),
            "buckets": [[le if le != float("inf") else "+Inf", n] for le, n in ob],
        }
        svc["request_hist"] = {"count": dcount, "p50_ms": none_ms(hist_quantile(0.5, db)),
                               "p99_ms": none_ms(hist_quantile(0.99, db))}
        svc["upstream_hist"] = {"count": ucount, "p50_ms": none_ms(hist_quantile(0.5, ub)),
                                "p99_ms": none_ms(hist_quantile(0.99, ub))}
        svc["rss_after_kib"] = rss_kib(c.pid)
        miss[rate] = {"direct": direct, "service": svc,
                      "overhead_p50_ms": svc["p50_ms"] - direct["p50_ms"],
                      "overhead_p99_ms": svc["p99_ms"] - direct["p99_ms"]}
    c_hwm = rss_kib(c.pid, "VmHWM")
    c.stop()

    # 4. Resident memory: idle, then holding 1,000 keep-alive connections.
    d = Service("rss", redis_port, sim_port)
    ready_samples.append(d.ready_ms)
    time.sleep(1.0)
    rss_idle = rss_kib(d.pid)
    socks = hold_connections(d.port, 1000)
    time.sleep(1.0)
    rss_conns = rss_kib(d.pid)
    status, _ = hreq(d.port, "GET", "/healthz")
    for s in socks:
        s.close()
    d.stop()

    # 5. Start to ready, a few more fresh starts (Redis up, page cache warm).
    for i in range(5):
        e = Service(f"start{i}", redis_port, sim_port)
        ready_samples.append(e.ready_ms)
        e.stop()

    res["scenarios"] = {
        "ceiling": ceiling, "ceiling_strict": best["ceiling_strict"], "memory_hit": mem,
        "rounds": rounds,
        "memory_hit_stream": mem_stream,
        "redis_hit": red, "miss": {str(k): v for k, v in miss.items()},
        "rss_idle_kib": rss_idle, "rss_1000_conns_kib": rss_conns,
        "rss_1000_conns_healthz_status": status, "miss_instance_vmhwm_kib": c_hwm,
        "ready_ms": ready_samples,
    }
    return res


def none_ms(seconds):
    return None if seconds is None else seconds * 1000.0


# ---------------------------------------------------------------- report

def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True,
                              cwd=ROOT).stdout.strip()
    except Exception:  # noqa: BLE001
        return "?"


def machine():
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    dirty = sh("git status --porcelain -- src Cargo.toml Cargo.lock config/default.toml "
               "config/canned_answers.toml")
    return {
        "nproc": sh("nproc"), "cpu": cpu, "mem": f"{mem_kib / 1048576:.1f} GiB",
        "kernel": platform.release(), "rustc": sh("rustc --version"),
        "wrk": (sh("wrk -v 2>&1 | head -1") or "wrk").split(" Copyright")[0],
        "redis": sh("redis-server --version"),
        "commit": sh("git rev-parse --short HEAD") + (" + uncommitted changes in src/config"
                                                      if dirty else ""),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def cpu_text(r):
    parts = []
    for k, v in r.get("cpu", {}).items():
        per = v["us_per_request"]
        parts.append(f"{k} CPU {v['pct_of_one_cpu']:.0f}% of one core"
                     + (f" = {per:.1f} µs per request" if per is not None else ""))
    return ", ".join(parts) or "CPU not measured"


def fmt(x, nd=2):
    return "n/a" if x is None else f"{x:.{nd}f}"


def verdict(ok):
    return "pass" if ok else "**miss**"


def report(res, mach, command):
    s = res["scenarios"]
    ceil = s["ceiling"]
    mem, red = s["memory_hit"], s["redis_hit"]
    miss = s["miss"]
    ready = s["ready_ms"]
    ready_med = statistics.median(ready)
    rows = []

    def row(what, value, target, ok):
        rows.append((what, value, target, "" if ok is None else verdict(ok)))

    row(f"ceiling: `GET /healthz` (best of {ROUNDS} rounds)",
        f"{ceil['rps']:,.0f} req/s; p50 {ceil['p50_ms']:.3f} ms, p99 {ceil['p99_ms']:.3f} ms",
        "(reference)", None)
    strict = s["ceiling_strict"]
    row(f"strict ceiling: `POST /ask` to `bench/ceiling` (axum, fixed body of a hit's bytes; "
        f"best of {ROUNDS})",
        f"{strict['rps']:,.0f} req/s; p50 {strict['p50_ms']:.3f} ms, "
        f"p99 {strict['p99_ms']:.3f} ms",
        "(reference)", None)
    for name, r, target, strict_target in (
            ("cache hit, memory", mem, 0.8, 0.85),
            ("cache hit, Redis (memory off)", red, 0.5, 0.7)):
        ratio = r["rps"] / ceil["rps"]
        sratio_ = r["rps"] / strict["rps"]
        row(f"{name}: `POST /ask`, same question (best of {ROUNDS})",
            f"{r['rps']:,.0f} req/s = **{ratio:.2f}×** ceiling, **{sratio_:.2f}×** strict "
            f"ceiling; p50 {r['p50_ms']:.3f} ms, p99 {r['p99_ms']:.3f} ms",
            f"≥ {target}× ceiling; ≥ {strict_target}× strict", 
            ratio >= target and sratio_ >= strict_target)
    ms_ = s["memory_hit_stream"]
    sratio = ms_["rps"] / mem["rps"]
    row(f"streamed cache hit, memory: `POST /ask`, `Accept: text/event-stream` (best of {ROUNDS})",
        f"{ms_['rps']:,.0f} req/s = **{sratio:.2f}×** the non-streamed memory hit "
        f"({ms_['rps'] / ceil['rps']:.2f}× ceiling); p50 {ms_['p50_ms']:.3f} ms, "
        f"p99 {ms_['p99_ms']:.3f} ms",
        "≥ 0.8× memory hit", sratio >= 0.8)
    for rate in MISS_RATES:
        m = miss[str(rate)]
        d, v = m["direct"], m["service"]
        row(f"miss path at {rate} req/s: simulator direct",
            f"{d['rps']:,.0f} req/s achieved; p50 {d['p50_ms']:.2f} ms, p99 {d['p99_ms']:.2f} ms",
            "(reference)", None)
        row(f"miss path at {rate} req/s: through the service",
            f"{v['rps']:,.0f} req/s achieved; p50 {v['p50_ms']:.2f} ms, p99 {v['p99_ms']:.2f} ms",
            "", None)
        target = rate == 1000
        row(f"**overhead** at {rate} req/s (service − direct)",
            f"p50 **{m['overhead_p50_ms']:+.2f} ms**, p99 **{m['overhead_p99_ms']:+.2f} ms**",
            "p99 ≤ 1 ms" if target else "(p99 ≤ 1 ms at 1000)",
            (m["overhead_p99_ms"] <= 1.0) if target else None)
        oh = v["overhead_hist"]
        if oh["count"] > 0:
            val = (f"p50 ≈ {fmt(oh['p50_ms'], 3)} ms, p99 ≈ {fmt(oh['p99_ms'], 3)} ms "
                   f"({oh['count']:.0f} samples)")
        else:
            val = "no samples: the histogram is registered but not observed by this build"
        row(f"`qa_overhead_seconds` at {rate} req/s (from buckets)", val,
            "p99 ≤ 1 ms" if target else "", None if not target or oh["count"] == 0
            else (oh["p99_ms"] or 0) <= 1.0)
    row("RSS idle (VmRSS after start)", f"{s['rss_idle_kib'] / 1024:.1f} MiB", "< 20 MiB",
        s["rss_idle_kib"] / 1024 < 20)
    row("RSS with 1,000 open keep-alive connections", f"{s['rss_1000_conns_kib'] / 1024:.1f} MiB",
        "< 64 MiB", s["rss_1000_conns_kib"] / 1024 < 64)
    last = miss[str(MISS_RATES[-1])]["service"]
    row("RSS after the miss-path runs (~12,000 distinct answers cached, 10,000 kept in memory)",
        f"{last['rss_after_kib'] / 1024:.1f} MiB (peak {s['miss_instance_vmhwm_kib'] / 1024:.1f} MiB)",
        "(informational)", None)
    row("start → first 200 from `GET /readyz`",
        f"median {ready_med:.1f} ms (min {min(ready):.1f}, max {max(ready):.1f}, {len(ready)} starts)",
        "< 200 ms", max(ready) < 200)

    lines = []
    lines.append(f"Run of {mach['date']} — `{command}`\n")
    lines.append("| measurement | result | target | |")
    lines.append("|---|---|---|---|")
    for what, value, target, ok in rows:
        lines.append(f"| {what} | {value} | {target} | {ok} |")
    lines.append("")
    lines.append("Machine: " + ", ".join([
        f"`nproc` {mach['nproc']}", mach["cpu"], f"{mach['mem']} RAM", f"Linux {mach['kernel']}",
        mach["rustc"], mach["wrk"], mach["redis"].split(" sha=")[0],
        f"source {mach['commit']}"]) + ".")
    lines.append("")
    lines.append("Details:")
    lines.append("")
    rounds = s["rounds"]
    for key, label in (("ceiling", "ceiling"), ("ceiling_strict", "strict ceiling"),
                       ("memory_hit", "memory hit"),
                       ("memory_hit_stream", "streamed memory hit"),
                       ("redis_hit", "Redis hit")):
        for i, r in enumerate(rounds[key]):
            extra = ""
            if "verified_hits" in r:
                extra = (f"; {r['ratio_same_round']:.2f}× the ceiling of the same round; cache "
                         f"hits counted by the service {r['verified_hits']:.0f} for "
                         f"{r['answers']:.0f} answers")
            if "ratio_to_memory_hit_same_round" in r:
                extra += (f"; {r['ratio_to_memory_hit_same_round']:.2f}× the memory hit of "
                          "the same round")
            lines.append(
                f"- {label}, round {i + 1}: wrk -t{r['threads']} -c{r['conns']} "
                f"{r['duration_us'] / 1e6:.0f} s: {r['rps']:,.0f} req/s, {r['requests']} "
                f"requests, errors {r['error_count']}, p50 {r['p50_ms']:.3f} ms, p90 "
                f"{r['latency_us']['p90'] / 1000:.3f} ms, p99 {r['p99_ms']:.3f} ms, max "
                f"{r['latency_us']['max'] / 1000:.1f} ms; {cpu_text(r)}; wrk used {r['wrk_cpu_pct']:.0f}% "
                f"and other processes {r['foreign_cpu_pct']:.0f}% of the CPUs{extra}")
    for rate in MISS_RATES:
        m = miss[str(rate)]
        v, d = m["service"], m["direct"]
        by = ", ".join(f"{k} {n:.0f}" for k, n in v["answers_by_source"].items() if n)
        lines.append(
            f"- miss path {rate} req/s: {v['conns']} connections; other processes "
            f"{d['foreign_cpu_pct']:.0f}% / {v['foreign_cpu_pct']:.0f}% of the CPUs during the "
            f"direct / service runs; direct: {d['requests']} "
            f"requests, errors {d['error_count']}, p90 {d['latency_us']['p90'] / 1000:.2f} ms, "
            f"p99.9 {d['latency_us']['p999'] / 1000:.2f} ms; service: {v['requests']} requests, "
            f"errors {v['error_count']}, p90 {v['latency_us']['p90'] / 1000:.2f} ms, "
            f"p99.9 {v['latency_us']['p999'] / 1000:.2f} ms; answers by source: {by}; cache "
            f"hits {v['cache_hits']:.0f}; coalesced {v['coalesced']:.0f}; {cpu_text(v)}; "
            f"VmRSS after the run {v['rss_after_kib'] / 1024:.1f} MiB")
    lines.append(f"- peak RSS (VmHWM) of the miss-path instance after both rates: "
                 f"{s['miss_instance_vmhwm_kib'] / 1024:.1f} MiB")
    lines.append("- start → ready samples (ms): " + ", ".join(f"{x:.1f}" for x in ready))
    for chk in res["checks"]:
        lines.append(f"- check: {chk}")
    return "\n".join(lines) + "\n"


def write_md(section):
    if os.path.exists(BENCHMARKS_MD):
        with open(BENCHMARKS_MD) as f:
            text = f.read()
    else:
        text = f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        text = f"{head}{BEGIN}\n{section}{END}{tail}"
    else:
        text = f"{text.rstrip()}\n\n{BEGIN}\n{section}{END}\n"
    with open(BENCHMARKS_MD, "w") as f:
        f.write(text)


def main():
    command = os.environ.get("BENCH_COMMAND", "bench/run.sh")
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(130))
    try:
        res = run()
    finally:
        stop_all()
    mach = machine()
    section = report(res, mach, command)
    with open(os.path.join(TMP, "results.json"), "w") as f:
        json.dump({"machine": mach, **res}, f, indent=1, default=str)
    print(section)
    if os.environ.get("BENCH_NO_WRITE") != "1":
        write_md(section)
        log(f"wrote the table into {BENCHMARKS_MD}")
    log(f"raw results: {TMP}/results.json")


if __name__ == "__main__":
    main()
