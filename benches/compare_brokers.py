#!/usr/bin/env python3
"""Several broker binaries against each other and the limit server, interleaved.

`run_benchmarks.py` measures one broker against the limit server. To tell
whether a change made the broker faster or slower, the binaries before and
after must share a sitting, and the machine's drift must hit them alike:
this script runs every scenario once per binary (and once in limit mode)
in each round, rotating the order every round, and prints the medians per
binary, the ratio of each median to the limit's, and the median of the
round-by-round ratios (`paired`).

    cargo build --release --workspace
    # a broker of an older commit, built from a clean export:
    mkdir /tmp/b && git archive 582e49a | tar -x -C /tmp/b && (cd /tmp/b && cargo build --release)
    python3 benches/compare_brokers.py --runs 7 \\
        --bin before=/tmp/b/target/release/pystrands-server \\
        --bin after=target/release/pystrands-server --out /tmp/compare.json
    python3 benches/compare_brokers.py --summary /tmp/compare.json

With --hop, echo scenarios also run against the limit server with a
backend hop (`loadgen --limit --hop`: each frame goes through the backend
connection and back, raw, before the answer), as target `limit-hop`;
`--summary FILE --floor limit-hop` takes the ratios to it.

Scenarios are run_benchmarks.py's (`run_benchmarks.py --list` shows them and
their commands); by default the fan-out, echo and connection scenarios,
issue 15's ten-million-delivery fan-outs, the five-room fan-outs and the
linear-cost series (N subscribers x 100 messages); --only picks others.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run_benchmarks  # noqa: E402  (the scenarios are defined once, there)

#: The scenarios compared by default: run_benchmarks.py's, those of the
#: fan-out, echo, conns, big, rooms5 and linear groups (the cluster group
#: has no limit server to compare with).
DEFAULT = [
    "fanout_1000x1000", "fanout_10000x100", "echo_100x1", "conns_19000",
    "fanout_1000x10000", "fanout_10000x1000", "fanout_1000x1000_rooms5",
    "fanout_10000x100_rooms5", "fanout_100x100", "fanout_1000x100",
    "fanout_5000x100", "fanout_19000x100",
]
SCENARIOS = {
    s["id"]: s["args"] for s in run_benchmarks.scenarios(False) if "limit" in s["targets"]
}

#: The figure each kind of scenario is compared on.
KEY = {
    "fanout": "server_cpu_per_delivery_us",
    "broadcast": "server_cpu_per_delivery_us",
    "echo": "server_cpu_per_round_trip_us",
    "conns": "server_connect_cpu_per_conn_us",
}


def measure(opts: argparse.Namespace) -> None:
    bins = dict(b.split("=", 1) for b in opts.bin)
    only = opts.only.split(",") if opts.only else DEFAULT
    unknown = [s for s in only if s not in SCENARIOS]
    if unknown:
        sys.exit(f"--only: unknown {unknown}; scenarios are {list(SCENARIOS)}")
    pin = ["--server-core", str(opts.server_core), "--core", str(opts.core), "--json"]
    records = []
    started = time.time()
    for run in range(opts.runs):
        for sid in only:
            targets = list(bins) + ["limit"]
            if opts.hop and sid.startswith("echo"):
                targets.append("limit-hop")
            k = run % len(targets)
            for target in targets[k:] + targets[:k]:
                cmd = [opts.loadgen, *SCENARIOS[sid], *pin]
                if target in ("limit", "limit-hop"):
                    cmd += ["--limit"] + (["--hop"] if target == "limit-hop" else [])
                else:
                    cmd += ["--server-bin", bins[target]]
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
                try:
                    result = json.loads(done.stdout.strip().splitlines()[-1])
                except (IndexError, ValueError):
                    result = {}
                records.append({
                    "run": run, "scenario": sid, "target": target, "rc": done.returncode,
                    "command": cmd, "loadavg": open("/proc/loadavg").read().split()[:3],
                    "result": result,
                })
                key = KEY[sid.split("_")[0]]
                print(f"[{time.time() - started:6.0f}s] {sid} {target} run {run + 1}: "
                      f"{key}={result.get(key)} rc={done.returncode} "
                      f"runq-wait={result.get('server_runq_wait_share')}", flush=True)
            with open(opts.out, "w") as f:
                json.dump({"bins": bins, "records": records}, f)
    print(f"wrote {opts.out}")


def summary(path: str, extra: list, floor: str = "limit") -> None:
    data = json.load(open(path))
    records = data["records"] if isinstance(data, dict) else data
    by = defaultdict(lambda: defaultdict(dict))
    order = []
    for r in records:
        if r["rc"] != 0:
            print(f"not counted (exit {r['rc']}): {r['scenario']} {r['target']} run {r['run'] + 1}")
            continue
        by[r["scenario"]][r["target"]][r["run"]] = r["result"]
        if r["target"] not in order:
            order.append(r["target"])
    order = [t for t in order if t != floor] + [floor]
    print("| scenario | figure | " + " | ".join(order) + " |")
    print("|---" * (len(order) + 2) + "|")
    for sid, targets in by.items():
        for fig in [KEY[sid.split("_")[0]], *extra]:
            cells = []
            limit = targets.get(floor, {})
            lim = [v[fig] for v in limit.values() if v.get(fig) is not None]
            lim_med = statistics.median(lim) if lim else None
            for t in order:
                runs = targets.get(t, {})
                vals = [v[fig] for v in runs.values() if v.get(fig) is not None]
                if not vals:
                    cells.append("-")
                    continue
                med = statistics.median(vals)
                cell = f"{med:.4g}"
                if t != floor and lim_med:
                    paired = [runs[i][fig] / limit[i][fig] for i in runs
                              if i in limit and runs[i].get(fig) and limit[i].get(fig)]
                    cell += f" ({med / lim_med:.2f}x"
                    cell += f", paired {statistics.median(paired):.2f})" if paired else ")"
                cells.append(f"{cell} n={len(vals)}")
            print(f"| {sid} | {fig} | " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", action="append", default=[], help="NAME=PATH of a broker binary (repeatable)")
    ap.add_argument("--loadgen", default=os.path.join(ROOT, "target", "release", "loadgen"))
    ap.add_argument("--runs", type=int, default=7, help="rounds (default 7)")
    ap.add_argument("--only", default="", help="comma-separated scenario ids (default: " + ",".join(DEFAULT) + ")")
    ap.add_argument("--server-core", type=int, default=0)
    ap.add_argument("--core", type=int, default=1)
    ap.add_argument("--out", default="compare.json")
    ap.add_argument("--summary", metavar="FILE", help="print the Markdown table of FILE and exit")
    ap.add_argument("--figures", default="", help="with --summary: more figures to show, comma-separated")
    ap.add_argument("--hop", action="store_true",
                    help="echo scenarios: also run the limit server with a backend hop (loadgen --limit --hop), as target limit-hop")
    ap.add_argument("--floor", default="limit",
                    help="with --summary: the target the ratios are taken to (limit, or limit-hop)")
    opts = ap.parse_args()
    if opts.summary:
        summary(opts.summary, [f for f in opts.figures.split(",") if f], opts.floor)
        return
    if not opts.bin:
        ap.error("give at least one --bin NAME=PATH")
    measure(opts)


if __name__ == "__main__":
    main()
