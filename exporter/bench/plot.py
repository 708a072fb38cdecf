# SPDX-License-Identifier: Apache-2.0
"""bench.png: throughput against batch size per runtime and bundle, and measured speedup against FLOPs ratio.

Drawn on a bare matplotlib Figure with the Agg canvas (no pyplot), so no GUI backend or global state is
touched and it works on a headless machine.
"""
from __future__ import annotations

from matplotlib.figure import Figure

from .results import REFERENCE_MARK

MARKERS = "osD^v<>ph*"


def figure(data: dict) -> Figure:
    """Left: images/s against batch, one line per (bundle, runtime); right: each reduced row's measured
    speedup (range over rounds as the error bar) against its FLOPs ratio, with y = x (speedup = FLOPs saved)."""
    rows = data["rows"]
    runtimes = list(dict.fromkeys(r["runtime"] for r in rows))
    bundles = list(dict.fromkeys(r["bundle"] for r in rows))
    batches = data["settings"]["batches"]
    colour = {name: f"C{i % 10}" for i, name in enumerate(runtimes)}
    fig = Figure(figsize=(13, 5.5), layout="constrained")
    left, right = fig.subplots(1, 2)

    for j, bundle in enumerate(bundles):
        for runtime in runtimes:
            line = sorted((r["batch"], r["images_per_s"]) for r in rows
                          if (r["bundle"], r["runtime"]) == (bundle, runtime))
            if not line:
                continue
            mark = f" {REFERENCE_MARK}" if any(r["reference_ops"] for r in rows if r["runtime"] == runtime) else ""
            left.plot(*zip(*line), marker=MARKERS[j % len(MARKERS)], color=colour[runtime],
                      linestyle=("-", "--", ":", "-.")[j % 4], label=f"{bundle}, {runtime}{mark}")
    if len(batches) > 1:
        left.set_xscale("log", base=2)
    left.set_xticks(batches, [str(b) for b in batches])
    left.set(xlabel="batch size", ylabel="images/s (from p50 latency)", title="Throughput")
    left.grid(True, alpha=0.3)
    left.legend(fontsize="x-small")

    compared = [r for r in rows if r["speedup"] is not None and r["flops_ratio"]]
    if compared:
        series = list(dict.fromkeys((r["runtime"], r["batch"]) for r in compared))
        for r in compared:
            lo, hi = r["speedup_range"]
            dodge = 1 + 0.006 * (series.index((r["runtime"], r["batch"])) - (len(series) - 1) / 2)  # bars side by side
            bar = [[r["speedup"] - lo], [hi - r["speedup"]]]
            right.errorbar(r["flops_ratio"] * dodge, r["speedup"], yerr=bar, capsize=3,
                           marker=MARKERS[batches.index(r["batch"]) % len(MARKERS)], color=colour[r["runtime"]],
                           linestyle="none")
        for bundle in dict.fromkeys(r["bundle"] for r in compared):
            at = [r for r in compared if r["bundle"] == bundle]
            right.annotate(bundle, (at[0]["flops_ratio"], max(r["speedup"] for r in at)), textcoords="offset points",
                           xytext=(4, 6), fontsize="small")
        values = [v for r in compared for v in (r["flops_ratio"], *r["speedup_range"])] + [1.0]
        ends = (min(values) * 0.95, max(values) * 1.05)
        right.plot(ends, ends, color="grey", linestyle="--", linewidth=1, label="speedup = FLOPs ratio")
        for name in dict.fromkeys(r["runtime"] for r in compared):
            right.plot([], [], marker="o", color=colour[name], linestyle="none", label=name)
        for b in dict.fromkeys(r["batch"] for r in compared):
            right.plot([], [], marker=MARKERS[batches.index(b) % len(MARKERS)], color="black", linestyle="none",
                       label=f"batch {b}")
        right.legend(fontsize="x-small")
    else:
        right.text(0.5, 0.5, "no speedups: bench a reduced bundle\ntogether with its dense bundle (method none)",
                   ha="center", va="center", transform=right.transAxes)
    right.set(xlabel="FLOPs ratio (dense / reduced)", ylabel="measured speedup against the dense bundle",
              title="Measured speedup against FLOPs ratio")
    right.grid(True, alpha=0.3)
    return fig
