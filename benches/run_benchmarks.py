#!/usr/bin/env python3
"""Runs the issue-4 benchmark scenarios against the broker and the load
generator's limit server, and writes benches/results/results.json.

    python3 benches/run_benchmarks.py                 # everything, 3 runs each
    python3 benches/run_benchmarks.py --runs 5
    python3 benches/run_benchmarks.py --only fanout,echo
    python3 benches/run_benchmarks.py --quick         # small and fast: checks the script
    python3 benches/run_benchmarks.py --list          # the scenarios and their commands
    python3 benches/run_benchmarks.py --table         # results.json as a Markdown table

The load generator and the broker are built once (`cargo build --release
--workspace`: target/release/loadgen, from tools/loadgen, and
target/release/pystrands-server); both binaries are then copied to a temporary
directory, so a rebuild by someone else during the runs cannot change what
is measured. Every scenario runs `--runs` times against the broker and
`--runs` times in `--limit` mode, alternating (broker, limit, limit,
broker, ...), with the server pinned to core 0 and the tool to core 1; the
runs of one scenario are spread over the whole measurement (run 1 of every
scenario, then run 2, ...), so a burst of load from elsewhere does not hit
all runs of one scenario.

The `cluster` group (cluster mode, two brokers through a Redis of the load
generator's own: `loadgen fanout --cluster 2`) has no limit-mode
counterpart: it runs against the broker only, beside a local fan-out of the
same size in the same run, and `--markdown` prints its own table (receiving
broker against local fan-out, sending broker per message at 1,000 and
5,000 remote subscribers, Redis per message).

results.json holds the machine (nproc, CPU model, kernel, load, date, git
commit), every run's raw JSON line (plus exit code, load average and the
stderr tail), and per scenario the medians of every numeric figure for the
broker and for the limit server, with the ratio broker/limit of the main
figures. With --only, scenarios already in the output file that were not
run again are kept.

Python 3 standard library only.
"""

import argparse
import datetime
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(ROOT, "benches", "results")
# The sources of what is measured (the broker and the load generator): a
# working-tree build with uncommitted changes there is flagged.
MEASURED = ["src", "tools/loadgen", "Cargo.toml", "Cargo.lock"]

# Figures whose broker/limit ratio is reported, by scenario kind. The first
# ones are the headline figures of BENCHMARKS.md.
FANOUT_FIGURES = [
    "deliveries_per_s",
    "server_cpu_per_delivery_us",
    "latency_p50_us",
    "latency_p99_us",
    "latency_max_us",
    "server_busy",
    "loadgen_busy",
    "server_runq_wait_share",
    "loadgen_runq_wait_share",
    "server_connect_cpu_per_conn_us",
    "rss_per_conn_bytes",
]
ECHO_FIGURES = [
    "round_trips_per_s",
    "server_cpu_per_round_trip_us",
    "latency_p50_us",
    "latency_p99_us",
    "latency_max_us",
    "server_busy",
    "loadgen_busy",
    "server_runq_wait_share",
    "loadgen_runq_wait_share",
]
CONNS_FIGURES = [
    "connects_per_s",
    "server_connect_cpu_per_conn_us",
    "rss_per_conn_bytes",
    "handshake_p50_us",
    "handshake_p99_us",
    "loadgen_connect_busy",
    "server_connect_busy",
    "server_connect_runq_wait_share",
]
# Cluster mode: the receiving brokers' and the sender's figures, Redis's,
# and how disturbed the shared core was.
CLUSTER_FIGURES = [
    "deliveries_per_s",
    "receiver_cpu_per_delivery_us",
    "broker0_cpu_per_delivery_us",
    "sender_cpu_per_message_us",
    "redis_cpu_per_message_us",
    "redis_net_cpu_per_message_us",
    "brokers_cpu_per_delivery_us",
    "cluster_cpu_per_delivery_us",
    "latency_p50_us",
    "latency_p99_us",
    "latency_broker0_p99_us",
    "latency_broker1_p99_us",
    "receiver_runq_wait_share",
    "sender_runq_wait_share",
    "redis_runq_wait_share",
    "loadgen_runq_wait_share",
    "server_core_others_share",
    "server_core_nice_share",
    "tool_core_others_share",
    "loadgen_busy",
]
SENDER_FIGURES = [
    "deliveries_per_s",
    "sender_cpu_per_message_us",
    "sender_net_cpu_per_message_us",
    "receiver_cpu_per_delivery_us",
    "redis_cpu_per_message_us",
    "redis_net_cpu_per_message_us",
    "latency_p50_us",
    "latency_p99_us",
    "sender_runq_wait_share",
    "receiver_runq_wait_share",
    "redis_runq_wait_share",
    "loadgen_runq_wait_share",
    "server_core_others_share",
    "server_core_nice_share",
    "tool_core_others_share",
    "loadgen_busy",
]
# Correctness counters: summed over runs, never medians.
CHECKS = [
    "lost",
    "duplicates",
    "out_of_order",
    "misrouted",
    "corrupt",
    "unsent_seq",
    "unexpected_closes",
    "connect_failed",
]


def scenario(sid, group, title, args, figures, timeout=60, sweep=None, targets=("broker", "limit")):
    return {
        "id": sid,
        "group": group,
        "title": title,
        "args": args,
        "figures": figures,
        "timeout": timeout,
        "sweep": sweep,
        "linear": None,
        "targets": list(targets),
    }


def cluster_scenarios(quick):
    """Cluster mode (two brokers through Redis) and its local references,
    broker only. Each has a `cluster_role`: (kind, subscribers, mode), kind
    "local" (one broker, N subscribers), "cluster" (N on each of two
    brokers) or "sender0" (none on the sending broker, N on the other);
    mode "burst" (as fast as possible) or "rate" (RATE messages/s, so the
    phase lasts as long whatever the number of subscribers)."""
    if quick:
        local, each, remote, messages, rate, rated = 400, 200, (200, 1000), 100, 100, 50
    else:
        local, each, remote, messages, rate, rated = 2000, 1000, (1000, 5000), 1000, 100, 300
    broker = ("broker",)
    # The brokers of a cluster run have no admin listener; neither has the
    # reference (and a fixed admin port may be taken on a shared machine).
    no_admin = ["--server-arg=--admin-port", "--server-arg=0"]
    out = []

    def add(kind, n, mode, title, args, figures):
        m = messages if mode == "burst" else rated
        name = "2x" if kind == "cluster" else f"{kind}_"
        sid = f"cluster_{name}{n}x{m}" + ("" if mode == "burst" else f"_rate{rate}")
        args = args + ["--messages", str(m)]
        how = f"{m:,} messages (64 B)"
        if mode == "rate":
            args += ["--rate", str(rate)]
            how += f" at {rate} messages/s"
        sc = scenario(sid, "cluster", f"{title}, {how}", args, figures, targets=broker)
        sc["cluster_role"] = [kind, n, mode]
        out.append(sc)

    def local_ref(n, mode):
        add("local", n, mode, f"local fan-out reference: one broker, {n:,} subscribers",
            ["fanout", "--subscribers", str(n)] + no_admin, FANOUT_FIGURES)

    def cluster(mode):
        add("cluster", each, mode, f"cluster: 2 brokers through Redis, {each:,} subscribers on each, sent through broker 0",
            ["fanout", "--cluster", "2", "--subscribers", str(2 * each)], CLUSTER_FIGURES)

    def sender0(r, mode):
        add("sender0", r, mode, f"cluster: 2 brokers, none on the sending broker, {r:,} on the other",
            ["fanout", "--cluster", "2", "--subscribers", str(r), "--sender-subscribers", "0"], SENDER_FIGURES)

    local_ref(local, "burst")
    local_ref(each, "burst")
    cluster("burst")
    for r in remote:
        sender0(r, "burst")
    local_ref(local, "rate")
    cluster("rate")
    for r in remote:
        sender0(r, "rate")
    return out


def sweep_messages(n):
    """Messages for an N-subscriber sweep point: about a million deliveries."""
    return max(50, -(-1_000_000 // n))


SWEEP_FULL = [100, 1000, 5000, 10000, 19000]
# Messages per run of the fixed-batch series (linear-cost target).
LINEAR_MESSAGES = 100
SWEEP_QUICK = [100, 500, 1000]


def scenarios(quick):
    """The scenarios of the issue's targets table (full or --quick sizes)."""
    if quick:
        f1 = (200, 100)
        f2 = (1000, 20)
        rate = (200, 15)
        echo = ["--duration", "1", "--warmup", "0.3"]
        conns = 1000
        sweep = SWEEP_QUICK
    else:
        f1 = (1000, 1000)
        f2 = (10000, 100)
        rate = (1000, 900)
        echo = ["--duration", "5", "--warmup", "1"]
        conns = 19000
        sweep = SWEEP_FULL

    def fan(n, m):
        return ["fanout", "--subscribers", str(n), "--messages", str(m)]

    out = [
        scenario(
            f"fanout_{f1[0]}x{f1[1]}",
            "fanout",
            f"fan-out {f1[0]:,} subscribers x {f1[1]:,} messages (64 B), as fast as possible",
            fan(*f1),
            FANOUT_FIGURES,
        ),
        scenario(
            f"fanout_{f2[0]}x{f2[1]}",
            "fanout",
            f"fan-out {f2[0]:,} subscribers x {f2[1]:,} messages (64 B), as fast as possible",
            fan(*f2),
            FANOUT_FIGURES,
        ),
        scenario(
            f"fanout_{f1[0]}x{f1[1]}_rooms5",
            "rooms5",
            f"fan-out {f1[0]:,} subscribers x {f1[1]:,} messages (64 B), every client in 5 rooms",
            fan(*f1) + ["--rooms-per-client", "5"],
            FANOUT_FIGURES,
        ),
        scenario(
            f"fanout_{f2[0]}x{f2[1]}_rooms5",
            "rooms5",
            f"fan-out {f2[0]:,} subscribers x {f2[1]:,} messages (64 B), every client in 5 rooms",
            fan(*f2) + ["--rooms-per-client", "5"],
            FANOUT_FIGURES,
        ),
        scenario(
            "fanout_rate30",
            "rate",
            f"fan-out at 30 messages/s to {rate[0]:,} subscribers ({rate[1]} messages)",
            fan(*rate) + ["--rate", "30"],
            FANOUT_FIGURES,
            timeout=int(rate[1] / 30) + 60,
        ),
        scenario(
            f"broadcast_{f1[0]}x{f1[1]}",
            "broadcast",
            f"broadcast to {f1[0]:,} clients x {f1[1]:,} messages (64 B)",
            ["broadcast", "--subscribers", str(f1[0]), "--messages", str(f1[1])],
            FANOUT_FIGURES,
        ),
        scenario(
            "echo_100x1",
            "echo",
            "echo: 100 clients, one in flight each, 64 B",
            ["echo", "--clients", "100", "--inflight", "1"] + echo,
            ECHO_FIGURES,
        ),
        scenario(
            "echo_70k",
            "echo70k",
            "echo: 100 clients, one in flight each, 70,000 B messages",
            ["echo", "--clients", "100", "--inflight", "1", "--size", "70000"] + echo,
            ECHO_FIGURES,
        ),
        scenario(
            f"conns_{conns}",
            "conns",
            f"{conns:,} idle connections (held 1 s)",
            ["conns", "--connections", str(conns), "--hold", "1"],
            CONNS_FIGURES,
        ),
    ]
    # Issue 15's sizes: ten times the messages of the two fan-out scenarios
    # above (10 million deliveries each).
    big = [(200, 1000), (1000, 100)] if quick else [(1000, 10000), (10000, 1000)]
    for n, m in big:
        out.append(
            scenario(
                f"fanout_{n}x{m}",
                "big",
                f"fan-out {n:,} subscribers x {m:,} messages (64 B), as fast as possible",
                fan(n, m),
                FANOUT_FIGURES,
                timeout=180,
            )
        )
    # The sweep reuses the fan-out scenarios above where the sizes match.
    known = {s["id"] for s in out}
    # Linear cost at a fixed number of messages (the same batching per
    # subscriber at every size): N x LINEAR_MESSAGES.
    for n in sweep:
        sid = f"fanout_{n}x{LINEAR_MESSAGES}"
        if sid in known:
            for s in out:
                if s["id"] == sid:
                    s["linear"] = n
            continue
        out.append(
            scenario(
                sid,
                "linear",
                f"fan-out {n:,} subscribers x {LINEAR_MESSAGES} messages (64 B), linear-cost series",
                fan(n, LINEAR_MESSAGES),
                FANOUT_FIGURES,
            )
        )
        out[-1]["linear"] = n
        known.add(sid)
    for n in sweep:
        sid = f"fanout_{n}x{sweep_messages(n)}"
        if sid not in known:
            out.append(
                scenario(
                    sid,
                    "sweep",
                    f"fan-out {n:,} subscribers x {sweep_messages(n):,} messages (64 B), sweep point",
                    fan(n, sweep_messages(n)),
                    FANOUT_FIGURES,
                    sweep=n,
                )
            )
            known.add(sid)
        else:
            for s in out:
                if s["id"] == sid:
                    s["sweep"] = n
    return out + cluster_scenarios(quick)


GROUPS = ["fanout", "big", "rooms5", "rate", "broadcast", "echo", "echo70k", "conns", "sweep", "linear", "cluster"]


def sh(cmd, **kw):
    """Output of a command, or None if it cannot run."""
    try:
        return subprocess.run(
            cmd, capture_output=True, text=True, check=True, timeout=30, **kw
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return [float(x) for x in f.read().split()[:3]]
    except OSError:
        return None


def cpuinfo():
    """The first CPU's fields of /proc/cpuinfo."""
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                k, _, v = line.partition(":")
                info[k.strip()] = v.strip()
    except OSError:
        pass
    return info


def cpu_model():
    return cpuinfo().get("model name") or platform.processor() or None


def read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def machine():
    fuzz = None
    if os.path.exists("/tmp/fuzz-status.log"):
        with open("/tmp/fuzz-status.log", errors="replace") as f:
            fuzz = f.read().strip().splitlines()[-1:] or None
    return {
        "nproc": int(sh(["nproc"]) or os.cpu_count() or 0),
        "cpu_model": cpu_model(),
        "cpu_family_model": "family {} model {} stepping {}".format(
            cpuinfo().get("cpu family"), cpuinfo().get("model"), cpuinfo().get("stepping")
        ),
        "cpu_mhz": cpuinfo().get("cpu MHz"),
        "hypervisor": "hypervisor" in cpuinfo().get("flags", "").split(),
        "mem_total": (read("/proc/meminfo") or "").splitlines()[0].split(":")[1].strip() if read("/proc/meminfo") else None,
        "tcp_congestion_control": read("/proc/sys/net/ipv4/tcp_congestion_control"),
        "tcp_rmem": read("/proc/sys/net/ipv4/tcp_rmem"),
        "tcp_wmem": read("/proc/sys/net/ipv4/tcp_wmem"),
        "lo_mtu": read("/sys/class/net/lo/mtu"),
        "kernel": platform.release(),
        "kernel_version": platform.version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": sh(["git", "rev-parse", "HEAD"], cwd=ROOT),
        # Uncommitted changes in what is measured, if any.
        "git_dirty": sh(
            ["git", "status", "--porcelain", "--", *MEASURED],
            cwd=ROOT,
        ),
        "rustc": sh(["rustc", "--version"]),
        "python": platform.python_version(),
        "loadavg_start": loadavg(),
        "fuzz_status": fuzz,
    }


def export_commit(rev, dest):
    """A clean copy of commit `rev` in `dest` (git archive), to build from."""
    commit = sh(["git", "rev-parse", "--verify", rev + "^{commit}"], cwd=ROOT)
    if not commit:
        sys.exit(f"--commit: {rev!r} is not a commit")
    os.makedirs(dest, exist_ok=True)
    arch = subprocess.Popen(["git", "archive", "--format=tar", commit], cwd=ROOT, stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", dest], stdin=arch.stdout, check=True)
    if arch.wait() != 0:
        sys.exit("git archive failed")
    # git archive stamps files with the commit's time: an older commit would
    # look older than the artifacts of a newer one in the shared target dir,
    # and cargo would reuse them. Stamp everything now, so the workspace
    # crate is always rebuilt from this tree (dependencies stay cached).
    for d, _, files in os.walk(dest):
        for f in files:
            os.utime(os.path.join(d, f), None)
    return commit


def build(verbose, src=ROOT, target_dir=None):
    """Builds the broker and the load generator once (release profile);
    returns (loadgen, pystrands-server) paths."""
    if os.path.exists(os.path.join(src, "tools", "loadgen", "Cargo.toml")):
        cmd = ["cargo", "build", "--release", "--locked", "--workspace"]
    else:
        # A commit from before the load generator became a workspace member
        # (tools/loadgen), when it was the `loadgen` bench of the broker crate.
        cmd = ["cargo", "bench", "--locked", "--bench", "loadgen", "--no-run"]
    cmd.append("--message-format=json-render-diagnostics")
    print("building:", " ".join(cmd), "in", src, file=sys.stderr)
    env = dict(os.environ)
    if target_dir:
        env["CARGO_TARGET_DIR"] = target_dir
    p = subprocess.run(cmd, cwd=src, env=env, stdout=subprocess.PIPE, stderr=None if verbose else subprocess.PIPE, text=True)
    if p.returncode != 0:
        sys.stderr.write(p.stderr or "")
        sys.exit(f"build failed ({p.returncode})")
    loadgen = server = None
    for line in p.stdout.splitlines():
        try:
            m = json.loads(line)
        except ValueError:
            continue
        if m.get("reason") != "compiler-artifact" or not m.get("executable"):
            continue
        name = m.get("target", {}).get("name")
        if name == "loadgen":
            loadgen = m["executable"]
        elif name == "pystrands-server":
            server = m["executable"]
    release = os.path.join(target_dir or os.path.join(src, "target"), "release")
    loadgen = loadgen or os.path.join(release, "loadgen")
    server = server or os.path.join(release, "pystrands-server")
    if not loadgen or not os.path.exists(loadgen) or not os.path.exists(server):
        sys.exit(f"cannot find the built binaries (loadgen {loadgen}, server {server})")
    return loadgen, server


def run_one(sc, target, run, bins, opts):
    """One loadgen run; returns the run record."""
    cmd = [bins["loadgen"]] + sc["args"] + [
        "--server-core", str(opts.server_core),
        "--core", str(opts.core),
        "--timeout", str(sc["timeout"]),
        "--json",
    ]
    if target == "limit":
        cmd.append("--limit")
    else:
        cmd += ["--server-bin", bins["server"]]
    rec = {
        "scenario": sc["id"],
        "target": target,
        "run": run,
        "command": " ".join(cmd[1:]),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "loadavg": loadavg(),
    }
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=sc["timeout"] + 20, cwd=ROOT)
        rec["rc"] = p.returncode
        out, err = p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        rec["rc"] = "killed: no exit within --timeout + 20 s"
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
    rec["wall_s"] = round(time.monotonic() - t0, 2)
    rec["result"] = None
    lines = out.strip().splitlines()
    if lines:
        try:
            rec["result"] = json.loads(lines[-1])
        except ValueError:
            pass
    if rec["rc"] != 0 or rec["result"] is None:
        rec["stdout_tail"] = out[-3000:]
    err = "\n".join(
        l for l in err.splitlines() if "--max-connections 100000 lowered" not in l
    )
    if err.strip():
        rec["stderr_tail"] = err[-3000:]
    return rec


def good(rec):
    r = rec.get("result")
    return rec.get("rc") == 0 and isinstance(r, dict) and r.get("ok") is True


def median_of(runs, key):
    vals = [
        r["result"][key]
        for r in runs
        if isinstance(r.get("result"), dict)
        and isinstance(r["result"].get(key), (int, float))
        and not isinstance(r["result"].get(key), bool)
    ]
    return statistics.median(vals) if vals else None


def summarize(sc, runs):
    """Medians per target over the good runs, and broker/limit ratios."""
    out = {
        "title": sc["title"],
        "group": sc["group"],
        "targets": sc["targets"],
        "cluster_role": sc.get("cluster_role"),
        "args": sc["args"],
        "sweep": sc["sweep"],
        "linear": sc.get("linear"),
        "figures": sc["figures"],
    }
    for target in ("broker", "limit"):
        mine = [r for r in runs if r["scenario"] == sc["id"] and r["target"] == target]
        ok = [r for r in mine if good(r)]
        keys = sorted(
            {
                k
                for r in ok
                for k, v in r["result"].items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
            }
        )
        out[target] = {
            "runs": len(mine),
            "good_runs": len(ok),
            "failed": [
                {"run": r["run"], "rc": r["rc"], "problems": (r.get("result") or {}).get("problems"), "stderr": r.get("stderr_tail", "")[-500:]}
                for r in mine
                if not good(r)
            ],
            "median": {k: median_of(ok, k) for k in keys},
            "checks": {
                k: sum((r.get("result") or {}).get(k) or 0 for r in mine) for k in CHECKS
            },
            "notes": sorted({n for r in mine for n in (r.get("result") or {}).get("notes", [])}),
            "loadavg_1m": [r["loadavg"][0] for r in mine if r.get("loadavg")],
        }
    ratios = {}
    paired = {}
    for k in sc["figures"]:
        b = out["broker"]["median"].get(k)
        l = out["limit"]["median"].get(k)
        ratios[k] = round(b / l, 3) if b is not None and l else None
        # The same ratio taken run by run (broker run i / limit run i).
        pr = []
        for i in range(1, max(out["broker"]["runs"], out["limit"]["runs"]) + 1):
            rb = [r for r in runs if r["scenario"] == sc["id"] and r["target"] == "broker" and r["run"] == i and good(r)]
            rl = [r for r in runs if r["scenario"] == sc["id"] and r["target"] == "limit" and r["run"] == i and good(r)]
            if rb and rl:
                vb, vl = rb[0]["result"].get(k), rl[0]["result"].get(k)
                if isinstance(vb, (int, float)) and isinstance(vl, (int, float)) and vl:
                    pr.append(vb / vl)
        paired[k] = round(statistics.median(pr), 3) if pr else None
    out["ratio"] = ratios
    out["paired_ratio_median"] = paired
    return out


def write(path, doc):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------- table

def fmt(v, key):
    if v is None:
        return "-"
    if key.endswith("_per_s"):
        if v >= 1e6:
            return f"{v / 1e6:.2f} M"
        if v >= 1e3:
            return f"{v / 1e3:.1f} k"
        return f"{v:.0f}"
    if key.endswith("_us") and ("latency" in key or "handshake" in key):
        return f"{v / 1e3:.2f} ms" if v >= 1000 else f"{v:.0f} µs"
    if key.endswith("_us"):
        return f"{v:.3f} µs" if v < 1 else f"{v:.2f} µs"
    if key.endswith("_bytes"):
        return f"{v:.0f} B" if v < 10000 else f"{v / 1024:.0f} KB"
    if key.endswith("_busy"):
        return f"{v * 100:.0f}%"
    return f"{v:g}"


def table(doc):
    """Markdown table: per scenario and figure, broker | limit | ratio."""
    rows = [
        "| scenario | figure | broker (median) | limit (median) | broker / limit |",
        "|---|---|---|---|---|",
    ]
    for sid, s in doc.get("scenarios", {}).items():
        first = True
        for k in s["figures"]:
            if k.endswith("_busy") or k.endswith("_share") or k == "latency_max_us":
                continue
            b = s["broker"]["median"].get(k)
            l = s["limit"]["median"].get(k)
            r = s["ratio"].get(k)
            rows.append(
                f"| {s['title'] if first else ''} | {k} | {fmt(b, k)} | {fmt(l, k)} | {'-' if r is None else f'{r:.2f}x'} |"
            )
            first = False
    return "\n".join(rows)


# The targets table: (scenario id, label, key, Go broker figure,
# target as (kind, bound)): "ratio" = broker/limit at most bound, "max" =
# broker figure at most bound.
TARGETS = [
    ("fanout_1000x1000", "deliveries/s", "deliveries_per_s", "60,000", None),
    ("fanout_1000x1000", "CPU per delivery", "server_cpu_per_delivery_us", "16 µs", ("ratio", 2.0)),
    ("fanout_1000x1000", "latency p50", "latency_p50_us", "", None),
    ("fanout_1000x1000", "latency p99", "latency_p99_us", "", None),
    ("fanout_10000x100", "deliveries/s", "deliveries_per_s", "50,000", None),
    ("fanout_10000x100", "CPU per delivery", "server_cpu_per_delivery_us", "20 µs", ("ratio", 2.0)),
    ("fanout_10000x100", "latency p50", "latency_p50_us", "", None),
    ("fanout_10000x100", "latency p99", "latency_p99_us", "", None),
    ("fanout_rate30", "deliveries/s", "deliveries_per_s", "", None),
    ("fanout_rate30", "CPU per delivery", "server_cpu_per_delivery_us", "16.5 µs", ("ratio", 1.2)),
    ("fanout_rate30", "latency p50", "latency_p50_us", "10–18 ms", None),
    ("fanout_rate30", "latency p99", "latency_p99_us", "27–74 ms", ("ratio", 1.2)),
    ("broadcast_1000x1000", "deliveries/s", "deliveries_per_s", "", None),
    ("broadcast_1000x1000", "CPU per delivery", "server_cpu_per_delivery_us", "", None),
    ("broadcast_1000x1000", "latency p99", "latency_p99_us", "", None),
    ("echo_100x1", "round trips/s", "round_trips_per_s", "10,000", None),
    ("echo_100x1", "CPU per round trip", "server_cpu_per_round_trip_us", "71 µs", ("ratio", 1.5)),
    ("echo_100x1", "latency p50", "latency_p50_us", "9 ms", None),
    ("echo_100x1", "latency p99", "latency_p99_us", "28 ms", ("ratio", 1.5)),
    ("echo_70k", "round trips/s", "round_trips_per_s", "", None),
    ("echo_70k", "CPU per round trip", "server_cpu_per_round_trip_us", "", None),
    ("echo_70k", "latency p99", "latency_p99_us", "", None),
    ("conns_19000", "connections/s", "connects_per_s", "3,300 (10,000 conns)", None),
    ("conns_19000", "CPU per connection", "server_connect_cpu_per_conn_us", "268 µs", ("ratio", 2.0)),
    ("conns_19000", "RSS per connection", "rss_per_conn_bytes", "34 KB", ("max", 2048)),
]


def verdict(b, l, target):
    if target is None or b is None:
        return ""
    kind, bound = target
    if kind == "ratio":
        if not l:
            return "?"
        r = b / l
        return f"{'met' if r <= bound else 'MISSED'} (≤ {bound:g}x)"
    return f"{'met' if b <= bound else 'MISSED'} (≤ {fmt(bound, 'x_bytes')})"


def markdown(doc):
    """The BENCHMARKS.md results table: medians, ratio, Go broker, target."""
    sc = doc.get("scenarios", {})
    rows = [
        "| scenario | figure | broker | limit mode | broker / limit | Go broker (issue) | target |",
        "|---|---|---|---|---|---|---|",
    ]
    last = None
    for sid, label, key, go, target in TARGETS:
        s = sc.get(sid)
        if not s:
            continue
        b = s["broker"]["median"].get(key)
        l = s["limit"]["median"].get(key)
        r = f"{b / l:.2f}" if b is not None and l else "-"
        title = s["title"] if sid != last else ""
        last = sid
        rows.append(f"| {title} | {label} | {fmt(b, key)} | {fmt(l, key)} | {r} | {go} | {verdict(b, l, target)} |")
    lin = doc.get("linear") or {}
    if lin:
        rows.append("")
        rows.append("| subscribers (100 messages each) | broker CPU per delivery | limit CPU per delivery | broker / limit |")
        rows.append("|---|---|---|---|")
        vals = []
        for n, sid in lin.items():
            s = sc.get(sid)
            if not s:
                continue
            b = s["broker"]["median"].get("server_cpu_per_delivery_us")
            l = s["limit"]["median"].get("server_cpu_per_delivery_us")
            if b is not None:
                vals.append(b)
            rows.append(f"| {int(n):,} | {fmt(b, 'cpu_us')} | {fmt(l, 'cpu_us')} | {b / l if b and l else 0:.2f} |")
        if vals:
            rows.append(f"\nbroker CPU per delivery, highest / lowest over the series: {max(vals) / min(vals):.2f} (target ≤ 1.20)")
    sw = doc.get("sweep") or {}
    if sw:
        rows.append("")
        rows.append("| subscribers (sweep, ~1 M deliveries) | deliveries/s broker / limit | CPU per delivery broker / limit | p99 broker / limit |")
        rows.append("|---|---|---|---|")
        for n, sid in sw.items():
            s = sc.get(sid)
            if not s:
                continue
            m = lambda t, k: s[t]["median"].get(k)
            rows.append(
                f"| {int(n):,} ({s['args'][4]} messages) | {fmt(m('broker', 'deliveries_per_s'), 'deliveries_per_s')} / {fmt(m('limit', 'deliveries_per_s'), 'deliveries_per_s')}"
                f" | {fmt(m('broker', 'server_cpu_per_delivery_us'), 'cpu_us')} / {fmt(m('limit', 'server_cpu_per_delivery_us'), 'cpu_us')}"
                f" | {fmt(m('broker', 'latency_p99_us'), 'latency_p99_us')} / {fmt(m('limit', 'latency_p99_us'), 'latency_p99_us')} |"
            )
    if len(rows) == 2:
        rows = []
    cluster = cluster_markdown(doc)
    if cluster:
        rows.append("")
        rows.append(cluster)
    return "\n".join(rows).strip("\n")


def paired(doc, sid_a, key_a, sid_b, key_b):
    """Median over runs of (a's figure / b's figure), both from run i."""
    by = {}
    for r in doc.get("runs", []):
        if r["target"] == "broker" and good(r) and r["scenario"] in (sid_a, sid_b):
            by.setdefault(r["run"], {})[r["scenario"]] = r["result"]
    vals = []
    for res in by.values():
        a = (res.get(sid_a) or {}).get(key_a)
        b = (res.get(sid_b) or {}).get(key_b)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b:
            vals.append(a / b)
    return statistics.median(vals) if vals else None


def cluster_markdown(doc):
    """The cluster-mode table of BENCHMARKS.md: figure, cluster median,
    reference median, ratio of the medians, ratio run by run (median),
    target; then the conditions of every scenario."""
    sc = doc.get("scenarios", {})
    role = {}
    for sid, s in sc.items():
        if s.get("cluster_role"):
            kind, n, mode = s["cluster_role"]
            role[(kind, n, mode)] = sid
    if not role:
        return ""
    med = lambda sid, k: sc[sid]["broker"]["median"].get(k) if sid else None
    rows = [
        "| figure | cluster (median) | reference (median) | ratio of medians | ratio run by run (median) | target |",
        "|---|---|---|---|---|---|",
    ]

    def row(label, sid, key, ref_label=None, ref_sid=None, ref_key=None, target=None):
        if not sid:
            return
        v, ref = med(sid, key), med(ref_sid, ref_key)
        ratio = v / ref if v is not None and ref else None
        pr = paired(doc, sid, key, ref_sid, ref_key) if ref_sid else None
        verdict = ""
        if target and ratio is not None:
            verdict = f"{'met' if ratio <= target else 'MISSED'} (≤ {target:g}x)"
        reference = f"{ref_label}: {fmt(ref, ref_key)}" if ref_sid else "-"
        rows.append(
            f"| {label} | {fmt(v, key)} | {reference} | {'-' if ratio is None else f'{ratio:.2f}'}"
            f" | {'-' if pr is None else f'{pr:.2f}'} | {verdict} |"
        )

    for mode, how in (("burst", "burst"), ("rate", "at a steady rate")):
        clusters = [k for k in role if k[0] == "cluster" and k[2] == mode]
        locals_ = sorted((k for k in role if k[0] == "local" and k[2] == mode), key=lambda k: -k[1])
        for c in clusters:
            each = c[1]
            for l in locals_:
                row(
                    f"receiving broker CPU per delivery, {each:,} subscribers, {how}",
                    role[c], "receiver_cpu_per_delivery_us",
                    f"one broker, {l[1]:,} subscribers", role[l], "server_cpu_per_delivery_us",
                    1.2,
                )
            same = role.get(("local", each, mode))
            row(
                f"sending broker CPU per delivery ({each:,} local subscribers, plus publishing), {how}",
                role[c], "broker0_cpu_per_delivery_us",
                f"one broker, {each:,} subscribers", same, "server_cpu_per_delivery_us",
            )
            whole = role.get(("local", 2 * each, mode))
            row(
                f"all brokers + Redis CPU per delivery, {how}",
                role[c], "cluster_cpu_per_delivery_us",
                f"one broker, {2 * each:,} subscribers", whole, "server_cpu_per_delivery_us",
            )
            row(f"redis-server CPU per message, {each:,} subscribers on each broker, {how}",
                role[c], "redis_cpu_per_message_us")
        s0 = sorted(k for k in role if k[0] == "sender0" and k[2] == mode)
        if len(s0) >= 2:
            lo, hi = s0[0], s0[-1]
            for key, what, target in (
                ("sender_cpu_per_message_us", "sending broker CPU per message", 1.2),
                ("sender_net_cpu_per_message_us", "the same, net of its idle CPU", 1.2),
                ("redis_cpu_per_message_us", "redis-server CPU per message", None),
                ("redis_net_cpu_per_message_us", "the same, net of its idle CPU", None),
            ):
                row(
                    f"{what}, no local subscriber, {hi[1]:,} remote, {how}",
                    role[hi], key, f"{lo[1]:,} remote", role[lo], key, target,
                )
    rows.append("")
    rows.append("| scenario | load average (1 min, per run) | run-queue wait, median share of the phase | other tasks on the servers' core, median (niced) |")
    rows.append("|---|---|---|---|")
    for sid, s in sc.items():
        if not s.get("cluster_role"):
            continue
        m = s["broker"]["median"]
        loads = ", ".join(f"{x:.1f}" for x in s["broker"].get("loadavg_1m", []))
        pct = lambda k: "-" if m.get(k) is None else f"{m[k] * 100:.0f}%"
        if s["cluster_role"][0] != "local":
            waits = f"receiver {pct('receiver_runq_wait_share')}, sender {pct('sender_runq_wait_share')}, redis {pct('redis_runq_wait_share')}, tool {pct('loadgen_runq_wait_share')}"
            others = f"{pct('server_core_others_share')} ({pct('server_core_nice_share')})"
        else:
            waits = f"server {pct('server_runq_wait_share')}, tool {pct('loadgen_runq_wait_share')}"
            others = "-"
        rows.append(f"| {s['title']} | {loads} | {waits} | {others} |")
    return "\n".join(rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="runs per scenario and target (default 3)")
    ap.add_argument("--only", default="", help="comma-separated groups or scenario ids: " + ",".join(GROUPS))
    ap.add_argument("--quick", action="store_true", help="small sizes, 1 run: checks the script itself (writes results-quick.json)")
    ap.add_argument("--out", help="output file (default benches/results/results.json, or results-quick.json with --quick)")
    ap.add_argument("--server-core", type=int, default=0)
    ap.add_argument("--core", type=int, default=1)
    ap.add_argument("--loadgen", help="use this loadgen binary instead of building (the broker is then --server-bin or target/release/pystrands-server)")
    ap.add_argument("--server-bin", help="broker binary (default: the one built with the load generator)")
    ap.add_argument(
        "--commit",
        help="build from a clean export of this commit (git archive into a temporary directory, "
        "own target dir) instead of the working tree, so the figures belong to a commit",
    )
    ap.add_argument("--fresh", action="store_true", help="with --only: drop scenarios of the existing output file")
    ap.add_argument("--list", action="store_true", help="print the scenarios and exit")
    ap.add_argument("--table", action="store_true", help="print every figure of the output file as a Markdown table and exit")
    ap.add_argument("--markdown", action="store_true", help="print the BENCHMARKS.md results table (targets, Go figures) and exit")
    ap.add_argument("-v", "--verbose", action="store_true")
    opts = ap.parse_args()
    if opts.quick and "--runs" not in " ".join(sys.argv):
        opts.runs = 1
    out_path = opts.out or os.path.join(RESULTS_DIR, "results-quick.json" if opts.quick else "results.json")

    if opts.table or opts.markdown:
        with open(out_path) as f:
            doc = json.load(f)
        print(markdown(doc) if opts.markdown else table(doc))
        return 0

    all_sc = scenarios(opts.quick)
    want = [w.strip() for w in opts.only.split(",") if w.strip()]
    unknown = [w for w in want if w not in GROUPS and w not in {s["id"] for s in all_sc}]
    if unknown:
        ap.error(f"--only: unknown {unknown}; groups are {GROUPS}, ids {[s['id'] for s in all_sc]}")
    if want:
        chosen = [
            s
            for s in all_sc
            if s["id"] in want
            or s["group"] in want
            or ("sweep" in want and s["sweep"] is not None)
            or ("linear" in want and s.get("linear") is not None)
        ]
    else:
        chosen = all_sc
    if opts.list:
        for s in chosen:
            limit = " [--limit]" if "limit" in s["targets"] else ""
            print(f"{s['id']:<22} {s['title']}\n{'':<22} loadgen {' '.join(s['args'])} --server-core {opts.server_core} --core {opts.core}{limit}")
        return 0
    if opts.runs < 1:
        ap.error("--runs must be at least 1")

    tmp = tempfile.mkdtemp(prefix="pystrands-bench-")
    built_commit = None
    if opts.loadgen:
        loadgen = opts.loadgen
        server = opts.server_bin or os.path.join(ROOT, "target", "release", "pystrands-server")
    elif opts.commit:
        src = os.path.join(tmp, "src-tree")
        built_commit = export_commit(opts.commit, src)
        # A persistent target dir per checkout keeps rebuilds incremental.
        target_dir = os.path.join(ROOT, "target", "bench-commit")
        loadgen, server = build(opts.verbose, src=src, target_dir=target_dir)
        server = opts.server_bin or server
    else:
        loadgen, server = build(opts.verbose)
        server = opts.server_bin or server
        dirty = sh(["git", "status", "--porcelain", "--", *MEASURED], cwd=ROOT)
        if dirty:
            print(f"warning: built from a working tree with uncommitted changes:\n{dirty}\n(use --commit HEAD for figures that belong to a commit)", file=sys.stderr)
    # Snapshot both binaries: someone else's rebuild must not change them mid-run.
    bins = {"loadgen": os.path.join(tmp, "loadgen"), "server": os.path.join(tmp, "pystrands-server")}
    shutil.copy2(loadgen, bins["loadgen"])
    shutil.copy2(server, bins["server"])

    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    doc = {"machine": None, "config": None, "scenarios": {}, "sweep": None, "linear": None, "runs": []}
    if want and not opts.fresh and os.path.exists(out_path):
        with open(out_path) as f:
            old = json.load(f)
        ids = {s["id"] for s in chosen}
        doc["scenarios"] = {k: v for k, v in old.get("scenarios", {}).items() if k not in ids}
        doc["runs"] = [r for r in old.get("runs", []) if r["scenario"] not in ids]
        doc["earlier"] = old.get("earlier", []) + [
            {"machine": old.get("machine"), "config": old.get("config"), "scenarios_kept": sorted(doc["scenarios"])}
        ]
    doc["machine"] = machine()
    if built_commit:
        doc["machine"]["git_commit"] = built_commit
        doc["machine"]["git_dirty"] = None
    doc["config"] = {
        "runs": opts.runs,
        "quick": opts.quick,
        "server_core": opts.server_core,
        "core": opts.core,
        "scenarios": [s["id"] for s in chosen],
        "built_from": f"commit {built_commit} (clean export)" if built_commit else ("--loadgen" if opts.loadgen else "working tree"),
        "loadgen_binary": loadgen,
        "loadgen_sha256": sha256(bins["loadgen"]),
        "server_binary": server,
        "server_sha256": sha256(bins["server"]),
        "order": "run i: broker then limit for odd i, limit then broker for even i; scenarios interleaved run by run",
    }

    total = sum(len(s["targets"]) for s in chosen) * opts.runs
    done = 0
    t_start = time.monotonic()
    try:
        for run in range(1, opts.runs + 1):
            order = ("broker", "limit") if run % 2 else ("limit", "broker")
            for sc in chosen:
                for target in order:
                    if target not in sc["targets"]:
                        continue
                    done += 1
                    rec = run_one(sc, target, run, bins, opts)
                    doc["runs"].append(rec)
                    r = rec.get("result") or {}
                    main_key = sc["figures"][1] if sc["group"] != "conns" else "server_connect_cpu_per_conn_us"
                    status = "ok" if good(rec) else f"FAILED rc={rec['rc']} {r.get('problems') or rec.get('stderr_tail', '')[-300:]}"
                    if "cluster" in r:
                        # The servers share a core: say how much of it others took.
                        waits = (
                            f"runq-wait receiver={r.get('receiver_runq_wait_share')} sender={r.get('sender_runq_wait_share')} "
                            f"redis={r.get('redis_runq_wait_share')} tool={r.get('loadgen_runq_wait_share')} "
                            f"others on core {opts.server_core}={r.get('server_core_others_share')}"
                        )
                    else:
                        waits = (
                            f"runq-wait server={r.get('server_runq_wait_share', r.get('server_connect_runq_wait_share'))} "
                            f"tool={r.get('loadgen_runq_wait_share')}"
                        )
                    print(
                        f"[{done}/{total} {time.monotonic() - t_start:5.0f}s load {rec['loadavg'][0] if rec['loadavg'] else '?'}] "
                        f"{sc['id']} {target} run {run}: {sc['figures'][0]}={r.get(sc['figures'][0])} "
                        f"{main_key}={r.get(main_key)} p99={r.get('latency_p99_us', r.get('handshake_p99_us'))} "
                        f"{waits} {status}",
                        file=sys.stderr,
                    )
                    # Keep what is done so far, in case the rest fails.
                    doc["scenarios"].update({s["id"]: summarize(s, doc["runs"]) for s in chosen})
                    write(out_path, doc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    doc["machine"]["loadavg_end"] = loadavg()
    doc["machine"]["duration_s"] = round(time.monotonic() - t_start, 1)
    doc["scenarios"].update({s["id"]: summarize(s, doc["runs"]) for s in chosen})
    # The chart's series: subscriber count -> scenario id.
    sweep = {}
    for sid, s in doc["scenarios"].items():
        if s.get("sweep"):
            sweep[str(s["sweep"])] = sid
    doc["sweep"] = dict(sorted(sweep.items(), key=lambda kv: int(kv[0])))
    linear = {str(s["linear"]): sid for sid, s in doc["scenarios"].items() if s.get("linear")}
    doc["linear"] = dict(sorted(linear.items(), key=lambda kv: int(kv[0])))
    write(out_path, doc)
    print(table(doc))
    print(f"\nwrote {os.path.relpath(out_path, ROOT)} in {doc['machine']['duration_s']} s", file=sys.stderr)
    failed = sum(1 for r in doc["runs"] if r["scenario"] in {s["id"] for s in chosen} and not good(r))
    if failed:
        print(f"{failed} runs failed a check or did not finish: see results.json", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
