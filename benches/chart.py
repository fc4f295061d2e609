#!/usr/bin/env python3
"""Draws benches/results/fanout.svg from benches/results/results.json: the
fan-out sweep (subscriber count 100 to 19,000, one room, 64-byte messages,
as fast as possible), broker versus the load generator's limit server.

Three panels against the subscriber count (log scale): deliveries/s,
p99 latency, and server CPU per delivery. Lines join the medians; a
vertical bar spans the lowest to the highest run. The CPU panel also shows,
dashed, the fixed-batch series (100 messages at every size) of the
linear-cost target, when results.json has it. With --before, the broker's
medians from an earlier results file are drawn too (grey, hollow circles),
so a change shows against what it replaced.

    python3 benches/chart.py [--in results.json] [--out fanout.svg] [--before earlier.json]

Python 3 standard library only: the SVG is written by hand.
"""

import argparse
import json
import math
import os
import sys
from xml.sax.saxutils import escape

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")

W, H = 1260, 510
PANEL_W, PANEL_H = 320, 300
TOP = 110
LEFTS = [85, 500, 915]
COLORS = {"broker": "#d1495b", "limit": "#00798c"}
BEFORE = "#8a8a8a"
LABELS = {"broker": "pystrands-server (broker)", "limit": "limit server (machine floor)"}

PANELS = [
    ("deliveries_per_s", "Deliveries per second", "deliveries/s", 1.0),
    ("latency_p99_us", "p99 latency (burst: includes queueing)", "ms", 1e-3),
    ("server_cpu_per_delivery_us", "Server CPU per delivery", "µs", 1.0),
]


def nice_step(span, ticks=5):
    raw = span / ticks
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def fmt_tick(v, unit):
    if unit == "deliveries/s":
        if v >= 1e6:
            return f"{v / 1e6:g} M"
        if v >= 1e3:
            return f"{v / 1e3:g} k"
    return f"{v:g}"


def series(doc, target, key, scale, which="sweep"):
    """[(subscribers, median, lo, hi)] from the sweep (or the linear series)."""
    pts = []
    for n, sid in sorted((doc.get(which) or {}).items(), key=lambda kv: int(kv[0])):
        s = doc["scenarios"].get(sid)
        if not s:
            continue
        med = s[target]["median"].get(key)
        vals = [
            r["result"][key]
            for r in doc["runs"]
            if r["scenario"] == sid
            and r["target"] == target
            and r.get("rc") == 0
            and isinstance(r.get("result"), dict)
            and r["result"].get("ok")
            and isinstance(r["result"].get(key), (int, float))
        ]
        if med is None:
            continue
        lo, hi = (min(vals), max(vals)) if vals else (med, med)
        pts.append((int(n), med * scale, lo * scale, hi * scale))
    return pts


def panel(out, left, key, title, unit, scale, doc, xs, dashed=None, before=None):
    data = {t: series(doc, t, key, scale) for t in ("broker", "limit")}
    extra = {t: series(doc, t, key, scale, dashed) for t in ("broker", "limit")} if dashed else {}
    earlier = series(before, "broker", key, scale) if before else []
    ymax = max([p[3] for pts in list(data.values()) + list(extra.values()) for p in pts]
               + [p[1] for p in earlier] + [1e-9])
    step = nice_step(ymax)
    ytop = step * math.ceil(ymax / step * 1.0001)
    x0, x1 = math.log10(min(xs)), math.log10(max(xs))
    pad = (x1 - x0) * 0.06

    def X(n):
        return left + (math.log10(n) - x0 + pad) / (x1 - x0 + 2 * pad) * PANEL_W

    def Y(v):
        return TOP + PANEL_H - v / ytop * PANEL_H

    out.append(f'<text x="{left + PANEL_W / 2}" y="{TOP - 14}" class="title">{escape(title)}</text>')
    out.append(f'<rect x="{left}" y="{TOP}" width="{PANEL_W}" height="{PANEL_H}" class="frame"/>')
    v = 0.0
    while v <= ytop * 1.0001:
        y = Y(v)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + PANEL_W}" y2="{y:.1f}" class="grid"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" class="ytick">{escape(fmt_tick(round(v, 10), unit))}</text>')
        v += step
    for n in xs:
        x = X(n)
        out.append(f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{TOP + PANEL_H}" class="grid"/>')
        label = f"{n / 1000:g}k" if n >= 1000 else str(n)
        out.append(f'<text x="{x:.1f}" y="{TOP + PANEL_H + 18}" class="xtick">{label}</text>')
    out.append(f'<text x="{left + PANEL_W / 2}" y="{TOP + PANEL_H + 40}" class="axis">subscribers in one room (log scale)</text>')
    out.append(
        f'<text x="{left - 52}" y="{TOP + PANEL_H / 2}" class="axis" '
        f'transform="rotate(-90 {left - 52} {TOP + PANEL_H / 2})">{escape(unit)}</text>'
    )
    if len(earlier) > 1:
        d = " ".join(f"{X(n):.1f},{Y(m):.1f}" for n, m, _, _ in earlier)
        out.append(f'<polyline points="{d}" fill="none" stroke="{BEFORE}" stroke-width="2"/>')
        for n, m, _, _ in earlier:
            out.append(f'<circle cx="{X(n):.1f}" cy="{Y(m):.1f}" r="3.5" fill="white" stroke="{BEFORE}" stroke-width="1.8"/>')
    for t, pts in extra.items():
        if len(pts) > 1:
            d = " ".join(f"{X(n):.1f},{Y(m):.1f}" for n, m, _, _ in pts)
            out.append(f'<polyline points="{d}" fill="none" stroke="{COLORS[t]}" stroke-width="1.8" stroke-dasharray="6 4" opacity="0.85"/>')
    for t, pts in data.items():
        c = COLORS[t]
        if len(pts) > 1:
            d = " ".join(f"{X(n):.1f},{Y(m):.1f}" for n, m, _, _ in pts)
            out.append(f'<polyline points="{d}" fill="none" stroke="{c}" stroke-width="2.5"/>')
        for n, m, lo, hi in pts:
            x = X(n)
            bx = x + (-3 if t == "broker" else 3)  # side by side, not on top
            if hi > lo:
                out.append(f'<line x1="{bx:.1f}" y1="{Y(lo):.1f}" x2="{bx:.1f}" y2="{Y(hi):.1f}" stroke="{c}" stroke-width="1.5" opacity="0.6"/>')
                for yv in (lo, hi):
                    out.append(f'<line x1="{bx - 3:.1f}" y1="{Y(yv):.1f}" x2="{bx + 3:.1f}" y2="{Y(yv):.1f}" stroke="{c}" stroke-width="1.5" opacity="0.6"/>')
            shape = (
                f'<circle cx="{x:.1f}" cy="{Y(m):.1f}" r="4" fill="{c}"/>'
                if t == "broker"
                else f'<rect x="{x - 4:.1f}" y="{Y(m) - 4:.1f}" width="8" height="8" fill="{c}"/>'
            )
            out.append(shape)


def machine_line(m):
    return "{}, {} cores, Linux {}, {}, commit {}".format(
        m.get("cpu_model", "?"),
        m.get("nproc", "?"),
        m.get("kernel", "?"),
        (m.get("date") or "?")[:10],
        (m.get("git_commit") or "?")[:10],
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--in", dest="inp", default=os.path.join(RESULTS, "results.json"))
    ap.add_argument("--out", default=os.path.join(RESULTS, "fanout.svg"))
    ap.add_argument("--before", help="an earlier results.json: its broker medians drawn in grey")
    a = ap.parse_args()
    with open(a.inp) as f:
        doc = json.load(f)
    before = None
    if a.before:
        with open(a.before) as f:
            before = json.load(f)
    xs = sorted(int(n) for n in (doc.get("sweep") or {}))
    if len(xs) < 2:
        sys.exit(f"{a.inp}: no sweep of at least two subscriber counts (run benches/run_benchmarks.py --only sweep)")
    m = doc.get("machine") or {}
    runs = (doc.get("config") or {}).get("runs")
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
        'font-family="DejaVu Sans, Helvetica, Arial, sans-serif">',
        "<style>"
        ".title{font-size:15px;font-weight:bold;text-anchor:middle;fill:#222}"
        ".head{font-size:18px;font-weight:bold;fill:#111}"
        ".sub{font-size:12.5px;fill:#444}"
        ".frame{fill:none;stroke:#888;stroke-width:1}"
        ".grid{stroke:#e3e3e3;stroke-width:1}"
        ".ytick{font-size:12px;text-anchor:end;fill:#333}"
        ".xtick{font-size:12px;text-anchor:middle;fill:#333}"
        ".axis{font-size:12.5px;text-anchor:middle;fill:#333}"
        ".legend{font-size:13px;fill:#222}"
        "</style>",
        f'<rect width="{W}" height="{H}" fill="white"/>',
        '<text x="20" y="28" class="head">PyStrands fan-out: broker vs the machine\'s floor</text>',
        f'<text x="20" y="48" class="sub">{escape(f"one room, 64-byte messages, about 1,000,000 deliveries per run, as fast as possible; broker on core 0, load generator on core 1; median of {runs} runs, bars: lowest to highest run")}</text>',
        f'<text x="20" y="65" class="sub">{escape(machine_line(m))}</text>',
    ]
    dashed = "linear" if len(doc.get("linear") or {}) > 1 else None
    for left, (key, title, unit, scale) in zip(LEFTS, PANELS):
        panel(out, left, key, title, unit, scale, doc, xs,
              dashed if key == "server_cpu_per_delivery_us" else None, before)
    ly = H - 16
    lx = 40
    for t in ("broker", "limit"):
        c = COLORS[t]
        out.append(f'<line x1="{lx}" y1="{ly - 4}" x2="{lx + 30}" y2="{ly - 4}" stroke="{c}" stroke-width="2.5"/>')
        if t == "broker":
            out.append(f'<circle cx="{lx + 15}" cy="{ly - 4}" r="4" fill="{c}"/>')
        else:
            out.append(f'<rect x="{lx + 11}" y="{ly - 8}" width="8" height="8" fill="{c}"/>')
        out.append(f'<text x="{lx + 38}" y="{ly}" class="legend">{escape(LABELS[t])}</text>')
        lx += 270
    if before:
        commit = ((before.get("machine") or {}).get("git_commit") or "?")[:7]
        out.append(f'<line x1="{lx}" y1="{ly - 4}" x2="{lx + 30}" y2="{ly - 4}" stroke="{BEFORE}" stroke-width="2"/>')
        out.append(f'<circle cx="{lx + 15}" cy="{ly - 4}" r="3.5" fill="white" stroke="{BEFORE}" stroke-width="1.8"/>')
        out.append(f'<text x="{lx + 38}" y="{ly}" class="legend">{escape(f"broker at {commit}")}</text>')
        lx += 200
    if dashed:
        n = (doc.get("scenarios", {}).get(next(iter(doc["linear"].values()))) or {}).get("args", ["", "", "", "", "?"])[4]
        out.append(f'<line x1="{lx}" y1="{ly - 4}" x2="{lx + 30}" y2="{ly - 4}" stroke="#555" stroke-width="1.8" stroke-dasharray="6 4"/>')
        out.append(f'<text x="{lx + 38}" y="{ly}" class="legend">{escape(f"CPU panel, dashed: {n} messages at every size")}</text>')
    out.append("</svg>")
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        f.write("\n".join(out) + "\n")
    print(f"wrote {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
