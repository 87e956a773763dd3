#!/usr/bin/env python3
"""The multi-instance benchmark of resilient-qa (`bench/run.sh --scale`, which builds first).

What sharing a Redis between instances costs one instance, and what three instances behind
a load balancer give on this machine:

1. cache-hit throughput (memory hits, closed loop) of an instance with the cross-instance
   lease and per-client rate limiting ON (limits high enough never to refuse, so every
   request pays the check in Redis) against one with both OFF; interleaved rounds, best
   of each;
2. the miss path (a new question every request, paced at a fixed rate) of the same two:
   p50/p99 latency, the difference is what the lease and the limit checks add;
3. three instances behind HAProxy (Debian's), sharing the Redis: cache-hit throughput of
   the whole through the load balancer, against one instance without it.

Prints a Markdown section and rewrites the "Several instances" section of BENCHMARKS.md
(unless BENCH_NO_WRITE=1). Standard library only; shares bench/bench.py's helpers.
"""

import json
import os
import shutil
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as B  # noqa: E402

BEGIN = "<!-- bench/run.sh --scale: generated section begin -->"
END = "<!-- bench/run.sh --scale: generated section end -->"
ROUNDS = 3
MISS_RATE = 200
CONNS = B.THROUGHPUT_CONNS

# Both off: a lone instance as before this work.
PLAIN = {"QA__CACHE__COALESCE_ACROSS_INSTANCES": "false"}
# Both on, never refusing: every request is checked in Redis (GCRA), every miss takes a
# lease and checks the daily budget.
SHARED = {
    "QA__CACHE__COALESCE_ACROSS_INSTANCES": "true",
    "QA__LIMITS__PER_CLIENT_RPS": "1000000",
    "QA__LIMITS__PER_CLIENT_BURST": "1000000",
    "QA__LIMITS__PER_CLIENT_MODEL_CALLS_PER_DAY": "1000000000",
}


def haproxy_bin():
    for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy"):
        if os.access(p, os.X_OK):
            return p
    return shutil.which("haproxy")


def start_backends():
    redis, redis_port = B.start_redis()
    _, sim_port = B.start_sim()
    return redis, redis_port, sim_port


def warm_hit(svc, tag):
    q = f"Where is my order? (bench {tag})"
    for _ in range(2):
        status, body = svc.ask(q)
    if status != 200 or body.get("source") != "cache":
        raise SystemExit(f"{svc.name}: warm-up question not a cache hit: {status} {body}")


def limit_checks(m):
    return B.metric(m, "qa_rate_limit_checks_total", limit="rate", store="redis")


def leases(m):
    return B.metric(m, "qa_question_leases_total")


def run():
    res = {}
    redis, redis_port, sim_port = start_backends()
    plain = B.Service("plain", redis_port, sim_port, PLAIN)
    shared = B.Service("shared", redis_port, sim_port, SHARED)
    tag = f"scale{os.getpid()}"
    for svc in (plain, shared):
        warm_hit(svc, tag)
        B.wrk(f"warmup_{svc.name}", f"http://127.0.0.1:{svc.port}/ask", "ask_same", CONNS,
              duration=2, tag=tag)

    # 1. Cache-hit throughput, interleaved rounds.
    hits = {"plain": [], "shared": []}
    for i in range(ROUNDS):
        for svc in (plain, shared):
            m0 = B.parse_prometheus(B.hreq(svc.port, "GET", "/metrics")[1].decode())
            r = B.wrk(f"hit_{svc.name}_{i}", f"http://127.0.0.1:{svc.port}/ask", "ask_same",
                      CONNS, tag=tag, watch={"service": svc.pid, "redis-server": redis.pid})
            m1 = B.parse_prometheus(B.hreq(svc.port, "GET", "/metrics")[1].decode())
            r["rate_limit_checks"] = limit_checks(m1) - limit_checks(m0)
            hits[svc.name].append(r)
    best = {k: max(v, key=lambda r: r["rps"]) for k, v in hits.items()}
    res["hits"] = {"rounds": hits, "best": best,
                   "ratio": best["shared"]["rps"] / best["plain"]["rps"]}

    # 2. The miss path, paced, interleaved rounds (the lower p99 of each counts).
    miss = {"plain": [], "shared": []}
    conns = max(40, MISS_RATE // 5)
    for i in range(2):
        for svc in (plain, shared):
            m0 = B.parse_prometheus(B.hreq(svc.port, "GET", "/metrics")[1].decode())
            r = B.wrk(f"miss_{svc.name}_{i}", f"http://127.0.0.1:{svc.port}/ask", "ask_unique",
                      conns, rate=MISS_RATE, tag=f"miss-{svc.name}-{i}-{os.getpid()}",
                      watch={"service": svc.pid})
            m1 = B.parse_prometheus(B.hreq(svc.port, "GET", "/metrics")[1].decode())
            r["leases"] = leases(m1) - leases(m0)
            r["rate_limit_checks"] = limit_checks(m1) - limit_checks(m0)
            r["primary_answers"] = (B.metric(m1, "qa_requests_total", source="primary")
                                    - B.metric(m0, "qa_requests_total", source="primary"))
            miss[svc.name].append(r)
    mbest = {k: min(v, key=lambda r: r["p99_ms"]) for k, v in miss.items()}
    res["miss"] = {"rounds": miss, "best": mbest,
                   "added_p50_ms": mbest["shared"]["p50_ms"] - mbest["plain"]["p50_ms"],
                   "added_p99_ms": mbest["shared"]["p99_ms"] - mbest["plain"]["p99_ms"]}
    plain.stop()
    shared.stop()

    # 3. Three instances (defaults: lease on, limits off) behind HAProxy, against one.
    hap = haproxy_bin()
    if not hap:
        raise SystemExit("haproxy not found: run scripts/install-deps.sh haproxy")
    replicas = [B.Service(f"replica{i}", redis_port, sim_port) for i in range(3)]
    for svc in replicas:
        warm_hit(svc, tag)
    front = B.free_port()
    servers = "".join(f"    server r{i} 127.0.0.1:{svc.port}\n" for i, svc in enumerate(replicas))
    cfg = os.path.join(B.TMP, "haproxy.cfg")
    with open(cfg, "w") as f:
        f.write("global\n    maxconn 4096\n"
                "defaults\n    mode http\n    retries 3\n    option redispatch\n"
                "    retry-on conn-failure empty-response\n"
                "    timeout connect 1s\n    timeout client 30s\n    timeout server 30s\n"
                f"frontend fe\n    bind 127.0.0.1:{front}\n    default_backend be\n"
                "backend be\n    balance roundrobin\n    option httpchk GET /readyz\n"
                "    default-server inter 2s check\n" + servers)
    lb = B.spawn("haproxy", [hap, "-db", "-f", cfg])
    if B.poll_ready(front, "/healthz", 10.0) is None:
        raise SystemExit(f"haproxy did not start; see {B.TMP}/haproxy.log")
    base_lb = f"http://127.0.0.1:{front}"
    base_one = f"http://127.0.0.1:{replicas[0].port}"
    B.wrk("warmup_lb", base_lb + "/ask", "ask_same", CONNS, duration=2, tag=tag)
    lbr = {"one": [], "three_lb": []}
    for i in range(2):
        lbr["one"].append(B.wrk(f"one_{i}", base_one + "/ask", "ask_same", CONNS, tag=tag,
                                watch={"service": replicas[0].pid}))
        watch = {f"replica{j}": s.pid for j, s in enumerate(replicas)}
        watch["haproxy"] = lb.pid
        lbr["three_lb"].append(B.wrk(f"three_lb_{i}", base_lb + "/ask", "ask_same", CONNS,
                                     tag=tag, watch=watch))
    lbest = {k: max(v, key=lambda r: r["rps"]) for k, v in lbr.items()}
    res["lb"] = {"rounds": lbr, "best": lbest,
                 "ratio": lbest["three_lb"]["rps"] / lbest["one"]["rps"]}
    B.stop(lb)
    for svc in replicas:
        svc.stop()
    return res


def fmt_run(r):
    return (f"{r['rps']:,.0f} req/s; p50 {r['p50_ms']:.3f} ms, p99 {r['p99_ms']:.3f} ms; "
            f"other processes {r['foreign_cpu_pct']:.0f}%")


def report(res, mach, command):
    h, m, lb = res["hits"], res["miss"], res["lb"]
    hit_ok = h["ratio"] >= 0.95
    miss_ok = m["added_p99_ms"] <= 0.3
    checks = h["best"]["shared"]["rate_limit_checks"]
    lines = [
        f"Run of {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} — `{command}`",
        "",
        "| measurement | result | target | |",
        "|---|---|---|---|",
        f"| cache hit, memory, lease and limits off (best of {ROUNDS}) | "
        f"{fmt_run(h['best']['plain'])} | (reference) | |",
        f"| cache hit, memory, lease and limits on (best of {ROUNDS}) | "
        f"{fmt_run(h['best']['shared'])}; {checks:,.0f} rate-limit checks decided by Redis "
        "(cells taken in batches) "
        f"= **{h['ratio']:.3f}×** | ≥ 0.95× | {'pass' if hit_ok else '**miss**'} |",
        f"| miss path at {MISS_RATE} req/s, lease and limits off (lower p99 of 2) | "
        f"{fmt_run(m['best']['plain'])} | (reference) | |",
        f"| miss path at {MISS_RATE} req/s, lease and limits on (lower p99 of 2) | "
        f"{fmt_run(m['best']['shared'])}; {m['best']['shared']['leases']:,.0f} leases; "
        f"adds **{m['added_p50_ms']:+.3f} ms** p50, **{m['added_p99_ms']:+.3f} ms** p99 | "
        f"≤ +0.3 ms p99 | {'pass' if miss_ok else '**miss**'} |",
        f"| cache hit, memory, one instance, no load balancer (best of 2) | "
        f"{fmt_run(lb['best']['one'])} | (reference) | |",
        f"| cache hit, memory, three instances behind HAProxy (best of 2) | "
        f"{fmt_run(lb['best']['three_lb'])} = **{lb['ratio']:.2f}×** one instance | "
        "(stated) | |",
        "",
        f"Machine: {mach['nproc']} cores ({mach['cpu']}), {mach['mem']}, {mach['redis']}, "
        f"{mach['wrk']}, commit {mach['commit']}; HAProxy "
        f"{B.sh((haproxy_bin() or 'haproxy') + ' -v | head -1')}.",
        "",
        "CPU per run (percent of one core) of the three-instance runs: "
        + "; ".join(
            f"{name} {v['pct_of_one_cpu']:.0f}%"
            for name, v in lb["best"]["three_lb"]["cpu"].items()) + ".",
        "",
    ]
    return "\n".join(lines) + "\n"


def write_md(section):
    text = open(B.BENCHMARKS_MD).read()
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        text = f"{head}{BEGIN}\n{section}{END}{tail}"
    else:
        text = (f"{text.rstrip()}\n\n## Several instances (`bench/run.sh --scale`)\n\n"
                f"{BEGIN}\n{section}{END}\n")
    with open(B.BENCHMARKS_MD, "w") as f:
        f.write(text)


def main():
    command = os.environ.get("BENCH_COMMAND", "bench/run.sh --scale")
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(130))
    try:
        res = run()
    finally:
        B.stop_all()
    mach = B.machine()
    section = report(res, mach, command)
    with open(os.path.join(B.TMP, "scale.json"), "w") as f:
        json.dump(res, f, indent=1, default=str)
    print(section)
    if os.environ.get("BENCH_NO_WRITE") != "1":
        write_md(section)
        B.log(f"wrote the section into {B.BENCHMARKS_MD}")


if __name__ == "__main__":
    main()
