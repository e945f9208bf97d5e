#!/usr/bin/env python3
"""Plot what a certificate costs as one data directory grows (bench/scale.sh's table).

Reads the Markdown table bench/scale.sh wrote (default bench/results/scale.md), draws each
cost against the number of certificates stored (log-log, one line per build) into a PNG
(default bench/results/scale.png), and prints the growth of each cost for each build from
its smallest to its largest size: the exponent k of cost ~ count^k between the two, named
constant (|k| < 0.15), falling (k < -0.15), logarithmic-or-sublinear (k < 0.6) or
linear (k >= 0.6).

Usage: bench/plot_scale.py [TABLE.md] [OUT.png]
Needs matplotlib (`pip install matplotlib`).
"""
import math
import re
import sys

# (column header as scale.sh writes it, which number of the cell, label, higher is better)
COSTS = [
    ("store bytes per certificate", 0, "store bytes / certificate", False),
    ("serving / ready / loaded (s)", 0, "serving after restart (s)", False),
    ("RSS MB at ready / loaded / after OCSP", 0, "RSS at ready (MB)", False),
    ("RSS MB at ready / loaded / after OCSP", 2, "RSS after OCSP runs (MB)", False),
    ("enroll/s", 0, "enroll / s", True),
    ("revoke p50 / p99 ms", 1, "revoke p99 (ms)", False),
    ("OCSP req/s random (cache hit rate)", 0, "OCSP req/s, random mix", True),
    ("OCSP req/s hot (hit rate)", 0, "OCSP req/s, hot set", True),
    ("full CRL bytes", 0, "full CRL bytes", False),
]


def numbers(cell):
    return [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?", cell.replace(",", ""))]


def read_table(path):
    header, rows = None, []
    for line in open(path):
        line = line.strip()
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if header is None:
            header = cells
        elif not set(line) <= set("|-: "):
            rows.append(dict(zip(header, cells)))
    if header is None:
        sys.exit(f"plot_scale.py: no table in {path}")
    return rows


def growth(k):
    if abs(k) < 0.15:
        return "constant"
    if k < 0:
        return "falling"
    if k < 0.6:
        return "logarithmic or sublinear"
    return "linear"


def main():
    table = sys.argv[1] if len(sys.argv) > 1 else "bench/results/scale.md"
    out = sys.argv[2] if len(sys.argv) > 2 else "bench/results/scale.png"
    rows = read_table(table)
    builds = {}
    for r in rows:
        builds.setdefault(r["build"], []).append(r)

    print("| cost | build | smallest -> largest | exponent k (cost ~ n^k) | growth |")
    print("|---|---|---|---|---|")
    series = []
    for col, idx, label, _ in COSTS:
        for build, rs in builds.items():
            pts = []
            for r in rs:
                vals = numbers(r.get(col, ""))
                n = numbers(r["certificates"])
                if len(vals) > idx and n:
                    pts.append((n[0], vals[idx]))
            pts.sort()
            series.append((label, build, pts))
            if len(pts) >= 2 and pts[0][1] > 0 and pts[-1][1] > 0:
                (n0, c0), (n1, c1) = pts[0], pts[-1]
                k = math.log(c1 / c0) / math.log(n1 / n0)
                print(f"| {label} | {build} | {c0:g} at {n0:g} -> {c1:g} at {n1:g} | {k:.2f} | {growth(k)} |")

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("plot_scale.py: matplotlib is missing (pip install matplotlib); table printed only")
    cols = 3
    nrows = math.ceil(len(COSTS) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 3.6 * nrows))
    for ax, (col, idx, label, better_up) in zip(axes.flat, COSTS):
        for lab, build, pts in series:
            if lab != label or not pts:
                continue
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=build)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(label + (" (higher is better)" if better_up else ""), fontsize=10)
        ax.set_xlabel("certificates stored")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(COSTS):]:
        ax.axis("off")
    fig.suptitle(f"Cost against certificates stored ({table})")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    print(f"\nplot: {out}")


if __name__ == "__main__":
    main()
