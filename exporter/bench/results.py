# SPDX-License-Identifier: Apache-2.0
"""What `bench BUNDLE...` measured, as numbers (bench.json) and tables (bench.md, stdout).

Per (bundle, runtime, batch): latency percentiles over every timed call, images/s from the median, and
the coefficient of variation (stdev / mean), flagged above `CV_LIMIT`: a noisy row's percentiles and
speedup are not to be trusted. A reduced bundle's speedup is against the dense bundle (method none) of
the same model, in the same runtime and batch: the median over rounds of the per-round ratio of median
latencies (both sides of a round ran within seconds of each other, so the machine's drift cancels; a
median, like p50, shrugs off a call the machine interrupted), with its range over rounds, beside the
FLOPs ratio its manifest records.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Optional

import numpy as np

from . import machine as machine_info
from .timing import fmt_ms, ratios

CV_LIMIT = 0.10
REFERENCE_MARK = "†"  # rows whose plugin nodes ran the Python reference


@dataclass
class Row:
    """One (bundle, runtime, batch) as timed: each call's ms, per round."""

    bundle: str  # the bundle's label
    runtime: str
    batch: int
    latencies: list[list[float]]
    reference_ops: bool = False  # plugin nodes ran the token ops' Python reference: not a deployment time
    baseline: Optional[tuple[str, str]] = None  # (bundle, runtime) of the dense row a speedup is measured against
    flops_ratio: Optional[float] = None  # the dense model's GMACs over this bundle's (its manifest)


def summarise(row: Row, base: Optional[Row]) -> dict:
    """`row`'s numbers for bench.json; `base` is its dense row (None: no speedup)."""
    calls = np.concatenate([np.asarray(r, dtype=float) for r in row.latencies])
    p50, p90, p99 = (float(v) for v in np.percentile(calls, [50, 90, 99]))
    mean = float(calls.mean())
    cv = float(calls.std(ddof=1) / mean) if len(calls) > 1 else None
    out = {
        "bundle": row.bundle, "runtime": row.runtime, "batch": row.batch, "reference_ops": row.reference_ops,
        "p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "mean_ms": mean, "images_per_s": row.batch * 1000 / p50,
        "cv": cv, "cv_high": cv is not None and cv > CV_LIMIT, "calls": len(calls),
        "compared_with": None, "speedup": None, "speedup_range": None, "flops_ratio": row.flops_ratio,
        "latencies_ms": row.latencies,
    }
    if base is not None:
        per_round = ratios([statistics.median(r) for r in base.latencies], [statistics.median(r) for r in row.latencies])
        out.update(compared_with=base.bundle, speedup=statistics.median(per_round),
                   speedup_range=[min(per_round), max(per_round)])
    return out


def markdown(data: dict) -> str:
    """bench.md from bench.json's content: the machine and settings, the bundles, one row per timing, notes."""
    s = data["settings"]
    lines = [
        "# Throughput", "",
        f"Machine: {machine_info.summary(data['machine'])}.", "",
        f"Input {'x'.join(map(str, s['input']))}, batch {', '.join(map(str, s['batches']))}; every (runtime, bundle, "
        f"batch) timed in turn, {s['rounds']} rounds x {s['iterations']} batches, each runtime in a process of its "
        "own. "
        "Latency per batch; img/s from p50; CV = stdev / mean over every call "
        f"(⚠ above {s['cv_limit']:.0%}); speedup against the dense bundle in the same runtime and batch: median of "
        "per-round ratios (range over rounds).", "",
        "| bundle | run | model | GMACs | FLOPs ratio | speedups against |",
        "|---|---|---|---|---|---|",
    ]
    for b in data["bundles"]:
        flops = b.get("flops") or {}
        lines.append(f"| {b['label']} | {b['run_name']} | {b['model']} | {_num(flops.get('gmacs'), '.4f')} | "
                     f"{_num(flops.get('ratio'), '.2f', 'x')} | {b['baseline'] or '—'} |")
    lines += ["", table(data["rows"])]
    lines += [""] + [f"- {note}" for note in notes(data)]
    return "\n".join(lines) + "\n"


def table(rows: list[dict]) -> str:
    head = ["bundle", "runtime", "batch", "p50 ms", "p90 ms", "p99 ms", "img/s", "CV", "speedup", "FLOPs ratio",
            "speedup / FLOPs ratio"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cv = "—" if r["cv"] is None else f"{r['cv']:.1%}" + (" ⚠" if r["cv_high"] else "")
        speedup = "—"
        if r["speedup"] is not None:
            lo, hi = r["speedup_range"]
            speedup = f"{r['speedup']:.2f}x ({lo:.2f}–{hi:.2f})"
        per_flops = _num(r["speedup"] / r["flops_ratio"] if r["speedup"] and r["flops_ratio"] else None, ".2f")
        flops = _num(r["flops_ratio"], ".2f", "x") if r["speedup"] is not None else "—"
        runtime = r["runtime"] + (f" {REFERENCE_MARK}" if r["reference_ops"] else "")
        lines.append(f"| {r['bundle']} | {runtime} | {r['batch']} | {fmt_ms(r['p50_ms'])} | {fmt_ms(r['p90_ms'])} | "
                     f"{fmt_ms(r['p99_ms'])} | {r['images_per_s']:.1f} | {cv} | {speedup} | {flops} | {per_flops} |")
    return "\n".join(lines)


def notes(data: dict) -> list[str]:
    """The lines under the table: what the marks mean, what was skipped and why, the lone-run check."""
    out = []
    if any(r["reference_ops"] for r in data["rows"]):
        out.append(f"{REFERENCE_MARK} The plugin graph in onnxruntime: its plugin nodes (the fused token ops of a "
                   "TensorRT engine) run the ops' Python reference through onnxruntime-extensions, so this time checks "
                   "that the graph runs, it is not a deployment number.")
    noisy = [r for r in data["rows"] if r["cv_high"]]
    if noisy:
        out.append(f"⚠ {len(noisy)} of {len(data['rows'])} rows vary by more than {data['settings']['cv_limit']:.0%} "
                   "between calls (a busy or throttling machine): take their percentiles and speedups as rough.")
    if not any(b["baseline"] for b in data["bundles"]):
        out.append("No speedups: no reduced bundle was given with a dense bundle (method none) of the same model.")
    out += [f"Skipped {s['runtime']} on {s['bundle']} ({s['engine']}): {s['reason']}" for s in data["skipped"]]
    out += data["alone"]
    return out


def _num(value: Optional[float], spec: str, suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"
