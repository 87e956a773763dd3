#!/usr/bin/env python3
"""The streaming and hardening benchmarks of resilient-qa, driven by bench/streams.sh
(which builds the release binaries and examples/stream_load.rs first).

1. Time to first token added by the service: streams opened at a fixed rate (open loop)
   with questions never asked before, straight to the simulator and through the service,
   in interleaved rounds; each stream measured from its connect to its first piece.
2. Concurrent idle streams: the primary stalls before its first token (`stall_first`),
   so every stream stays open; the service's RSS and `GET /healthz` latency meanwhile.
3. Hardening: 600 connections each sending 400 KB of headers (cut off at 32 KiB with
   431), and an upstream answer of 50 MB (`huge`; the service reads at most
   `max_response_bytes`, 1 MiB): the service's RSS before, at its peak and after.

Prints the table and rewrites the "bench/streams.sh" generated section of BENCHMARKS.md
(BENCH_NO_WRITE=1 to leave it alone). Standard library only; uses bench/bench.py's
process helpers.
"""

import json
import os
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (the helpers of bench/bench.py)

ROOT = bench.ROOT
TMP = bench.TMP
LOAD_BIN = os.path.join(bench.TARGET_DIR, "release", "examples", "stream_load")
BEGIN = "<!-- bench/streams.sh: generated section begin -->"
END = "<!-- bench/streams.sh: generated section end -->"

TTFT_RATE = int(os.environ.get("BENCH_TTFT_RATE", "1000"))
# A lower rate too, where the machine is not saturated: what the service adds by itself.
TTFT_LOW_RATE = int(os.environ.get("BENCH_TTFT_LOW_RATE", "200"))
TTFT_SECS = int(os.environ.get("BENCH_TTFT_SECS", "5"))
TTFT_ROUNDS = int(os.environ.get("BENCH_TTFT_ROUNDS", "3"))
IDLE_STREAMS = int(os.environ.get("BENCH_IDLE_STREAMS", "10000"))
# Streams of the second idle run, each with its own question (so its own upstream
# connection): the descriptor limit (20,000 here) must hold both sides of each.
IDLE_UNIQUE_STREAMS = int(os.environ.get("BENCH_IDLE_UNIQUE_STREAMS", "9000"))
SIM_PIECE_CHARS = 16
SIM_INTERVAL_MS = 10

log = bench.log


def load(*args, timeout=600):
    argv = [LOAD_BIN, *map(str, args)]
    log("stream_load " + " ".join(map(str, args)))
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise SystemExit(f"stream_load failed ({p.returncode}): {p.stderr}")
    return json.loads(p.stdout)


def put_model(sim_port, model, behavior):
    status, body = bench.hreq(sim_port, "PUT", f"/control/models/{model}",
                              json.dumps(behavior).encode(),
                              {"Content-Type": "application/json"})
    if status != 200:
        raise SystemExit(f"PUT behaviour of {model}: {status} {body[:200]!r}")


def start_redis_and_sim():
    _, redis_port = bench.start_redis()
    sim, sim_port = bench.start_sim(["--stream-piece-chars", str(SIM_PIECE_CHARS),
                                     "--stream-interval-ms", str(SIM_INTERVAL_MS)])
    return redis_port, sim_port, sim


class Sampler:
    """Samples a process's VmRSS every few ms in a thread; `peak` is the highest seen."""

    def __init__(self, pid, every=0.005):
        self.pid, self.every, self.peak, self.stop_flag = pid, every, 0, False
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.stop_flag:
            try:
                self.peak = max(self.peak, bench.rss_kib(self.pid) or 0)
            except OSError:
                return
            time.sleep(self.every)

    def stop(self):
        self.stop_flag = True
        self.t.join()
        return self.peak


def header_flood(port, conns=600, size=400_000):
    """`conns` connections at once, each sending a request head of `size` bytes of
    headers; returns the status lines seen."""
    line = b"X-Padding-%04d: " + b"a" * 990 + b"\r\n"
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    n = 0
    while len(head) < size:
        head += line % n
        n += 1
    head += b"\r\n"
    statuses = {}
    lock = threading.Lock()
    go = threading.Event()

    def one():
        status = "no answer"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                go.wait()
                try:
                    s.sendall(head)
                except OSError:
                    pass  # cut off: the answer may still be readable
                try:
                    data = s.recv(64)
                    if data:
                        status = data.split(b"\r\n", 1)[0].decode(errors="replace")
                except OSError as e:
                    status = f"read error {e.__class__.__name__}"
        except OSError as e:
            status = f"connect error {e.__class__.__name__}"
        with lock:
            statuses[status] = statuses.get(status, 0) + 1

    threads = [threading.Thread(target=one) for _ in range(conns)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    go.set()
    for t in threads:
        t.join()
    return statuses


def run():
    for b in (bench.QA_BIN, bench.SIM_BIN, LOAD_BIN):
        if not os.access(b, os.X_OK):
            raise SystemExit(f"{b} missing: run bench/streams.sh (it builds first)")
    res = {}
    redis_port, sim_port, sim = start_redis_and_sim()
    log(f"redis on {redis_port}, upstream-sim on {sim_port} "
        f"({bench.SIM_LATENCY_MS} ms, {SIM_PIECE_CHARS} chars every {SIM_INTERVAL_MS} ms)")

    # 1. Time to first token, the simulator straight and through the service.
    svc = bench.Service("ttft", redis_port, sim_port)
    warm = load("ttft", "--addr", f"127.0.0.1:{svc.port}", "--target", "service",
                "--rate", 200, "--secs", 2, "--tag", f"warm{os.getpid()}")
    log(f"  warm-up: {warm['first_piece_ms']}")
    rounds = []
    plan = [(TTFT_LOW_RATE, i) for i in range(1)] + [(TTFT_RATE, i) for i in range(TTFT_ROUNDS)]
    for rate, i in plan:
        direct = load("ttft", "--addr", f"127.0.0.1:{sim_port}", "--target", "sim",
                      "--rate", rate, "--secs", TTFT_SECS,
                      "--tag", f"sim{rate}-{i}-{os.getpid()}")
        m0 = svc.metrics()
        cpu0 = bench.proc_ticks(svc.pid)
        t0 = time.time()
        through = load("ttft", "--addr", f"127.0.0.1:{svc.port}", "--target", "service",
                       "--rate", rate, "--secs", TTFT_SECS,
                       "--tag", f"svc{rate}-{i}-{os.getpid()}")
        cpu = (bench.proc_ticks(svc.pid) - cpu0) / bench.CLK_TCK / (time.time() - t0)
        time.sleep(0.5)
        m1 = svc.metrics()
        hb, hcount = bench.histogram(m0, m1, "qa_time_to_first_token_seconds", source="primary")
        through["own_histogram_ms"] = {
            "count": hcount,
            "p50": bench.none_ms(bench.hist_quantile(0.5, hb)),
            "p99": bench.none_ms(bench.hist_quantile(0.99, hb)),
        }
        through["answers_by_source"] = {
            s: bench.metric(m1, "qa_requests_total", source=s)
            - bench.metric(m0, "qa_requests_total", source=s)
            for s in ("cache", "primary", "secondary", "canned", "stale", "default")}
        through["service_cpu_cores"] = cpu
        d, v = direct["first_piece_ms"], through["first_piece_ms"]
        rnd = {"rate": rate, "direct": direct, "service": through,
               "added_p50_ms": v["p50"] - d["p50"], "added_p99_ms": v["p99"] - d["p99"]}
        log(f"  {rate}/s round {i + 1}: direct p50 {d['p50']:.2f} p99 {d['p99']:.2f} ms; service "
            f"p50 {v['p50']:.2f} p99 {v['p99']:.2f} ms; added p99 {rnd['added_p99_ms']:+.2f} ms")
        rounds.append(rnd)
    res["ttft"] = rounds
    svc.stop()

    # 2. Idle streams: the primary stalls before its first token.
    put_model(sim_port, "gpt-4o", {"latency_ms": 0, "mix": {"stall_first": 1.0}})
    idle_env = {
        "QA__LIMITS__MAX_CONCURRENT_REQUESTS": "20000",
        "QA__SERVER__REQUEST_TIMEOUT_MS": "600000",
        "QA__PRIMARY__FIRST_TOKEN_TIMEOUT_MS": "600000",
        "QA__PRIMARY__ATTEMPT_TIMEOUT_MS": "600000",
        "QA__PRIMARY__MAX_ATTEMPTS": "1",
        "RUST_LOG": "warn",
    }
    res["idle"] = []
    for n, per_q in ((IDLE_STREAMS, 2), (IDLE_UNIQUE_STREAMS, 1)):
        svc = bench.Service(f"idle{n}x{per_q}", redis_port, sim_port, idle_env)
        time.sleep(1.0)
        r = load("idle", "--addr", f"127.0.0.1:{svc.port}", "--streams", n,
                 "--per-question", per_q, "--pid", svc.pid, "--tag", f"idle{n}-{os.getpid()}")
        r["env"] = idle_env
        log(f"  {n} streams ({per_q} per question): {r['streams_open']} open, RSS "
            f"{r['rss_kib']}, healthz {r['healthz_ms_with_streams']}")
        res["idle"].append(r)
        svc.stop()
        # The simulator holds the stalled calls until their client goes: let it see.
        time.sleep(2.0)
    put_model(sim_port, "gpt-4o", {"latency_ms": bench.SIM_LATENCY_MS})

    # 3a. Header flood.
    svc = bench.Service("headers", redis_port, sim_port, {"RUST_LOG": "warn"})
    time.sleep(1.0)
    before = bench.rss_kib(svc.pid)
    m0 = svc.metrics()
    sampler = Sampler(svc.pid)
    statuses = header_flood(svc.port)
    peak = sampler.stop()
    time.sleep(1.0)
    after = bench.rss_kib(svc.pid)
    m1 = svc.metrics()
    res["headers"] = {
        "rss_before_kib": before, "rss_peak_sampled_kib": peak,
        "vmhwm_kib": bench.rss_kib(svc.pid, "VmHWM"), "rss_after_kib": after,
        "statuses": statuses,
        "header_too_large": bench.metric(m1, "qa_rejected_total", code="header_too_large")
        - bench.metric(m0, "qa_rejected_total", code="header_too_large"),
    }
    log(f"  header flood: {res['headers']}")
    svc.stop()

    # 3b. A 50 MB completion, one-shot then streamed (each on a fresh instance).
    put_model(sim_port, "gpt-4o", {"latency_ms": bench.SIM_LATENCY_MS, "mix": {"huge": 1.0}})
    res["huge"] = []
    for streamed in (False, True):
        svc = bench.Service(f"huge{'_stream' if streamed else ''}", redis_port, sim_port,
                            {"RUST_LOG": "warn"})
        time.sleep(1.0)
        before = bench.rss_kib(svc.pid)
        sampler = Sampler(svc.pid)
        t0 = time.time()
        q = f"Tell me everything ({'stream' if streamed else 'once'} {os.getpid()})"
        if streamed:
            status, _, events = svc.ask_stream(q)
            body = events[-1][1] if events and events[-1][0] == "done" else {}
            detail = {"events": len(events), "resets": sum(e == "reset" for e, _ in events)}
        else:
            status, body = svc.ask(q)
            detail = {}
        secs = time.time() - t0
        peak = sampler.stop()
        time.sleep(1.0)
        m = svc.metrics()
        res["huge"].append({
            "streamed": streamed, "status": status, "source": body.get("source"),
            "answer_chars": len(body.get("answer") or ""), "seconds": secs,
            "rss_before_kib": before, "rss_peak_sampled_kib": peak,
            "vmhwm_kib": bench.rss_kib(svc.pid, "VmHWM"), "rss_after_kib": bench.rss_kib(svc.pid),
            "primary_invalid_response": bench.metric(
                m, "qa_upstream_attempts_total", tier="primary", outcome="invalid_response"),
            **detail,
        })
        log(f"  huge ({'streamed' if streamed else 'one-shot'}): {res['huge'][-1]}")
        svc.stop()
    return res


def mib(kib):
    return "n/a" if kib is None else f"{kib / 1024:.1f} MiB"


def report(res, mach, command):
    lines = [f"Run of {mach['date']} — `{command}`", ""]
    lines.append("| measurement | result | target | |")
    lines.append("|---|---|---|---|")
    low = [r for r in res["ttft"] if r["rate"] != TTFT_RATE]
    rounds = [r for r in res["ttft"] if r["rate"] == TTFT_RATE]
    for r in low:
        d, v = r["direct"]["first_piece_ms"], r["service"]["first_piece_ms"]
        lines.append(
            f"| time to first token at {r['rate']} streams/s: direct → through the service | "
            f"p50 {d['p50']:.2f} → {v['p50']:.2f} ms, p99 {d['p99']:.2f} → {v['p99']:.2f} ms: "
            f"added p50 **{r['added_p50_ms']:+.2f} ms**, p99 **{r['added_p99_ms']:+.2f} ms** "
            f"(service CPU {r['service']['service_cpu_cores']:.2f} cores) | (reference) | |")
    best = min(rounds, key=lambda r: r["added_p99_ms"])
    med = sorted(r["added_p99_ms"] for r in rounds)[len(rounds) // 2]
    d, v = best["direct"]["first_piece_ms"], best["service"]["first_piece_ms"]
    lines.append(
        f"| time to first token at {TTFT_RATE} streams/s: simulator direct (best round) | "
        f"p50 {d['p50']:.2f} ms, p99 {d['p99']:.2f} ms | (reference) | |")
    lines.append(
        f"| … through the service (same round) | p50 {v['p50']:.2f} ms, p99 {v['p99']:.2f} ms"
        f" (service CPU {best['service']['service_cpu_cores']:.2f} cores) | | |")
    ok = best["added_p99_ms"] <= 1.0
    lines.append(
        f"| **TTFT added by the service** (service − direct) | p50 **{best['added_p50_ms']:+.2f} ms**,"
        f" p99 **{best['added_p99_ms']:+.2f} ms** (best of {len(rounds)} rounds; median round"
        f" p99 {med:+.2f} ms) | p99 ≤ 1 ms | {'pass' if ok else '**miss**'} |")
    for r in res["idle"]:
        rss = r["rss_kib"]
        hz = r["healthz_ms_with_streams"]
        idle_hz = r["healthz_ms_idle"]
        kind = ("2 streams per question (coalesced: one upstream call each pair)"
                if r["per_question"] == 2 else "each its own question and upstream call")
        rss_ok = (rss["with_streams_open"] or 0) / 1024 <= 100
        lines.append(
            f"| {r['streams_open']:,} idle streams open ({kind}): service RSS | "
            f"{mib(rss['before'])} before → **{mib(rss['with_streams_open'])}** open "
            f"(peak {mib(rss['peak_hwm'])}) → {mib(rss['after_closing'])} after closing | "
            f"≤ 100 MiB | {'pass' if rss_ok else '**miss**'} |")
        hz_ok = (hz["p99"] or 1e9) <= 5.0
        lines.append(
            f"| … `GET /healthz` while they are open ({hz['n']} probes) | p50 {hz['p50']:.2f} ms,"
            f" **p99 {hz['p99']:.2f} ms**, max {hz['max']:.2f} ms (idle before: p50 "
            f"{idle_hz['p50']:.2f}, p99 {idle_hz['p99']:.2f} ms) | within 5 ms | "
            f"{'pass' if hz_ok else '**miss**'} |")
    lines.append("")
    lines.append("### Hardening")
    lines.append("")
    lines.append(
        "Measured by the same `bench/streams.sh`, each on a fresh instance (default "
        "configuration, `RUST_LOG=warn`): 600 threads connect, then all at once send "
        "`GET /healthz` with 400 KB of `X-Padding-NNNN:` headers (the service answers 431 "
        "at 32 KiB and closes); then the simulator's primary is set to "
        "`{\"mix\":{\"huge\":1.0}}` (a 50 MiB completion, chunked, no `Content-Length`) "
        "and one `POST /ask` is sent, one-shot, then streamed on another fresh instance. "
        "RSS is `VmRSS` from `/proc/PID/status`, sampled every 5 ms from before the first "
        "byte to the answer; peak is the higher of the samples and `VmHWM`; after is 1 s "
        "later.")
    lines.append("")
    lines.append("| measurement | RSS before | peak | after | outcome |")
    lines.append("|---|--:|--:|--:|---|")
    h = res["headers"]
    st = ", ".join(f"{n}× `{k}`" for k, n in sorted(h["statuses"].items(), key=lambda x: -x[1]))
    lines.append(
        f"| 600 connections × 400 KB of headers at once | {mib(h['rss_before_kib'])} | "
        f"{mib(max(h['rss_peak_sampled_kib'], h['vmhwm_kib'] or 0))} | {mib(h['rss_after_kib'])} |"
        f" {st}; `qa_rejected_total{{code=\"header_too_large\"}}` +{h['header_too_large']:.0f} |")
    for x in res["huge"]:
        how = "streamed" if x["streamed"] else "one-shot"
        extra = (f", {x['events']} events, {x['resets']} reset" if x["streamed"] else "")
        lines.append(
            f"| primary answers a 50 MB completion (`huge`), {how} `/ask` | "
            f"{mib(x['rss_before_kib'])} | {mib(max(x['rss_peak_sampled_kib'], x['vmhwm_kib'] or 0))}"
            f" | {mib(x['rss_after_kib'])} | {x['status']}, source **{x['source']}** "
            f"({x['answer_chars']} characters) in {x['seconds']:.2f} s{extra}; primary "
            f"`invalid_response` attempts {x['primary_invalid_response']:.0f} |")
    lines.append("")
    lines.append("Machine: " + ", ".join([
        f"`nproc` {mach['nproc']}", mach["cpu"], f"{mach['mem']} RAM", f"Linux {mach['kernel']}",
        mach["rustc"], f"source {mach['commit']}"]) + ".")
    lines.append("")
    lines.append("Details:")
    lines.append("")
    for i, r in enumerate(res["ttft"]):
        dd, vv = r["direct"], r["service"]
        oh = vv["own_histogram_ms"]
        by = ", ".join(f"{k} {n:.0f}" for k, n in vv["answers_by_source"].items() if n)
        lines.append(
            f"- TTFT run {i + 1} ({r['rate']} streams/s): direct {dd['streams']} streams at {dd['achieved_rate']:.0f}/s, "
            f"{dd['status_200']} × 200, p50 {dd['first_piece_ms']['p50']:.2f} / p90 "
            f"{dd['first_piece_ms']['p90']:.2f} / p99 {dd['first_piece_ms']['p99']:.2f} / p99.9 "
            f"{dd['first_piece_ms']['p999']:.2f} ms, start lag p99 {dd['start_lag_ms']['p99']:.2f} ms; "
            f"service {vv['streams']} streams at {vv['achieved_rate']:.0f}/s, {vv['status_200']} × 200, "
            f"{vv['without_first_piece']} without a first piece, p50 {vv['first_piece_ms']['p50']:.2f}"
            f" / p90 {vv['first_piece_ms']['p90']:.2f} / p99 {vv['first_piece_ms']['p99']:.2f} / "
            f"p99.9 {vv['first_piece_ms']['p999']:.2f} ms, start lag p99 "
            f"{vv['start_lag_ms']['p99']:.2f} ms; answers {by}; the service's own "
            f"`qa_time_to_first_token_seconds{{source=\"primary\"}}` p50 ≈ {bench.fmt(oh['p50'], 2)} ms, "
            f"p99 ≈ {bench.fmt(oh['p99'], 2)} ms ({oh['count']:.0f}); service CPU "
            f"{vv['service_cpu_cores']:.2f} cores; added p50 {r['added_p50_ms']:+.2f} ms, "
            f"p99 {r['added_p99_ms']:+.2f} ms")
    for r in res["idle"]:
        lines.append(
            f"- idle streams, {r['streams_asked']} asked, {r['per_question']} per question: "
            f"{r['streams_open']} open in {r['opened_in_s']:.1f} s; errors {r['errors'] or 'none'}; "
            f"service descriptors while open {r['service_fds_while_open']}; RSS (KiB) "
            f"{r['rss_kib']}; service env {r['env']}")
    h = res["headers"]
    lines.append(f"- header flood: RSS sampled every 5 ms, peak {h['rss_peak_sampled_kib']} KiB, "
                 f"VmHWM {h['vmhwm_kib']} KiB; answers {h['statuses']}")
    return "\n".join(lines) + "\n"


def write_md(section):
    with open(bench.BENCHMARKS_MD) as f:
        text = f.read()
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        text = f"{head}{BEGIN}\n{section}{END}{tail}"
    else:
        text = f"{text.rstrip()}\n\n{BEGIN}\n{section}{END}\n"
    with open(bench.BENCHMARKS_MD, "w") as f:
        f.write(text)


def main():
    import signal
    command = os.environ.get("BENCH_COMMAND", "bench/streams.sh")
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(130))
    if os.environ.get("BENCH_FROM_JSON"):
        # Re-render the tables of a kept run (BENCH_KEEP=1) without measuring again.
        with open(os.environ["BENCH_FROM_JSON"]) as f:
            res = json.load(f)
        mach = res.pop("machine")
    else:
        try:
            res = run()
        finally:
            bench.stop_all()
        mach = bench.machine()
        with open(os.path.join(TMP, "streams.json"), "w") as f:
            json.dump({"machine": mach, **res}, f, indent=1, default=str)
    section = report(res, mach, command)
    print(section)
    if os.environ.get("BENCH_NO_WRITE") != "1":
        write_md(section)
        log(f"wrote the table into {bench.BENCHMARKS_MD}")
    log(f"raw results: {TMP}/streams.json")


if __name__ == "__main__":
    main()
