#!/usr/bin/env python3
"""Turns the output of `cargo bench --bench hot_paths` into a Markdown table and puts it
into BENCHMARKS.md between its micro-benchmark markers (or prints it, with --print).

Usage: bench/criterion_table.py CRITERION_OUTPUT.txt [--print]
"""

import datetime
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS_MD = os.path.join(ROOT, "BENCHMARKS.md")
BEGIN = "<!-- bench/run.sh --micro: generated section begin -->"
END = "<!-- bench/run.sh --micro: generated section end -->"

UNITS = {"ps": 1e-3, "ns": 1.0, "µs": 1e3, "us": 1e3, "ms": 1e6, "s": 1e9}


def to_ns(v):
    n, u = v.split()
    return float(n) * UNITS[u]


def parse(text):
    rows = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.search(r"time:\s+\[([\d.]+ \S+) ([\d.]+ \S+) ([\d.]+ \S+)\]", line)
        if not m:
            continue
        head = line.split("time:")[0].strip()
        name = head if head else lines[i - 1].strip()
        thrpt = ""
        if i + 1 < len(lines):
            t = re.match(r"^\s*thrpt:\s+\[[\d.]+ \S+ ([\d.]+ \S+) [\d.]+ \S+\]", lines[i + 1])
            if t:
                thrpt = t.group(1)
        rows.append((name, m.group(1), m.group(2), m.group(3), thrpt))
    return rows


def table(rows):
    out = [f"`cargo bench --bench hot_paths -- --warm-up-time 1 --measurement-time 3`, "
           f"{datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}:",
           "",
           "| benchmark | time (estimate) | 95% interval | per second (1 core) | throughput |",
           "|---|---|---|---|---|"]
    for name, lo, est, hi, thrpt in rows:
        per_s = 1e9 / to_ns(est)
        out.append(f"| `{name}` | **{est}** | {lo} … {hi} | {per_s:,.0f} | {thrpt} |")
    return "\n".join(out) + "\n"


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    with open(sys.argv[1], encoding="utf-8") as f:
        rows = parse(f.read())
    if not rows:
        sys.exit("no criterion results found in " + sys.argv[1])
    section = table(rows)
    print(section)
    if "--print" in sys.argv or os.environ.get("BENCH_NO_WRITE") == "1":
        return
    text = open(BENCHMARKS_MD, encoding="utf-8").read() if os.path.exists(BENCHMARKS_MD) else "# Benchmarks\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        text = f"{head}{BEGIN}\n{section}{END}{tail}"
    else:
        text = f"{text.rstrip()}\n\n{BEGIN}\n{section}{END}\n"
    with open(BENCHMARKS_MD, "w", encoding="utf-8") as f:
        f.write(text)


if __name__ == "__main__":
    main()
