# SPDX-License-Identifier: Apache-2.0
"""`python -m exporter bench BUNDLE...`: every runtime that can run the bundles here, timed per batch size,
the results written into each bundle's bench/ folder (bench.json, bench.md, bench.png).

Runtimes, per bundle:
- onnxruntime on the CPU, on each of its graphs (fp32, fp16, plugin graphs). A plugin graph's plugin nodes
  run the token ops' Python reference (`runtime.op_reference`): its time says the graph runs, it is no
  deployment number, and it is marked so and never compared with the dense bundle;
- PyTorch eager fp32 on the CPU: the model rebuilt from the bundle's spec with random weights (`stages.model.timing_model`:
  timing does not depend on them, every token count is the bundle's), so no checkpoint or network is needed;
- on a CUDA GPU, PyTorch fp16, as module calls and as CUDA-graph replays;
- every engine under engines/ that can run here (TensorRT, TensorRT-RTX); one that cannot is listed as
  skipped with the pre-flight's reason.

Each runtime holds its models in a process of its own (`timing.Runtime`), and every (runtime, bundle,
batch) is timed in turn, round by round (`timing.interleaved`), so a slow minute of the machine hits
them alike. Then the first entry of each runtime is timed once more alone in a fresh process
(`timing.alone_note`): the check that taking turns did not change the absolute numbers.
"""
from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from ..bundle import (DAMAGED, ENGINES_DIR, FP32, all_entries, bench_folder, has_plugins, planned, precision_of,
                      read_intact, recorded_input, write_bench)
from ..engine import targets
from ..errors import ExporterError
from ..runtime.tensorrt import check_runnable
from ..spec import BuildSpec
from ..stages.model import timing_model
from . import machine, plot, results
from .throughput import method_label
from .timing import KINDS, Runtime, alone_note, interleaved


@dataclass
class Bundle:
    path: Path
    manifest: dict
    spec: BuildSpec
    input: tuple[int, ...]  # (channels, height, width) of model.onnx
    label: str = ""  # its name in the tables (`_labels`)


@dataclass
class Target:
    """One runtime on one bundle: what its `timing.Runtime` process (`kind`) loads."""

    bundle: Bundle
    runtime: str  # the same words for the same runtime on every bundle
    kind: str
    model: Any
    baseline: Optional[str] = None  # the dense bundle's runtime a speedup compares with (None: not compared)
    reference_ops: bool = False


def open_bundles(paths: list[Path]) -> list[Bundle]:
    """The bundles to time, or an ExporterError naming what is wrong with one (before any work)."""
    bundles, seen = [], set()
    for path in paths:
        if path.resolve() in seen:
            raise ExporterError(f"{path} is given twice.", "Pass each bundle once.")
        seen.add(path.resolve())
        manifest, spec = read_intact(path)  # time the graphs that were verified, not others
        for g in planned(spec.precision, spec.io_fp16, spec.plugins):
            if not (path / g.file).is_file():
                raise ExporterError(f"{path} has no {g.file}, which its build wrote: the bundle is damaged.", DAMAGED)
        _check_writable(path)
        bundles.append(Bundle(path, manifest, spec, recorded_input(manifest["io"], FP32)[1]))
    inputs = {b.input for b in bundles}
    if len(inputs) > 1:
        said = ", ".join(f"{b.path} {'x'.join(map(str, b.input))}" for b in bundles)
        raise ExporterError(f"The bundles take different inputs ({said}), so their times do not compare.",
                            "Bench bundles built for one input size together (same model resolution or --img-size).")
    _labels(bundles)
    return bundles


def _check_writable(path: Path) -> None:
    """bench/ must be writable, or minutes of timing would end in an error."""
    folder = bench_folder(path)
    if folder.exists() and not folder.is_dir():
        raise ExporterError(f"{folder} is a file, where bench writes its results.",
                            f"Move {folder} away, then run bench again.")
    where = folder if folder.is_dir() else path
    if not os.access(where, os.W_OK):
        raise ExporterError(f"Cannot write {folder}: {where} is not writable.",
                            "Bench a copy you can write to (e.g. cp -r the bundle to your home).")


def _labels(bundles: list[Bundle]) -> None:
    """Short names: the method and its parameters, with the model when the bundles hold several, else the run."""
    several = len({b.spec.model for b in bundles}) > 1
    for b in bundles:
        params = b.manifest.get("method_params") or {}
        b.label = (f"{b.spec.model} " if several else "") + method_label(b.spec.method, params)
    names = [b.label for b in bundles]
    for b in bundles:
        if names.count(b.label) > 1:
            b.label = b.manifest["run_name"]


def batch_sizes(bundles: list[Bundle], requested: Optional[list[int]]) -> list[int]:
    """`--batch` sizes, each within every bundle's batch range; by default the bundles' min, opt and max
    that lie in every range."""
    if requested is None:
        ends = sorted({n for b in bundles for n in b.spec.batch.as_tuple()})
        sizes = [n for n in ends if all(b.spec.batch.min <= n <= b.spec.batch.max for b in bundles)]
        if not sizes:
            said = ", ".join(f"{b.path} {b.spec.batch.min}..{b.spec.batch.max}" for b in bundles)
            raise ExporterError(f"The bundles' batch ranges do not overlap ({said}).",
                                "Bench bundles built with overlapping --batch ranges together, or each on its own.")
        return sizes
    for b in bundles:
        outside = [n for n in requested if not b.spec.batch.min <= n <= b.spec.batch.max]
        if outside:
            low, high = b.spec.batch.min, b.spec.batch.max
            raise ExporterError(
                f"--batch {','.join(map(str, outside))}: {b.path} takes batches {low}..{high} "
                f"(built with --batch {b.spec.batch}).",
                f"Pass --batch sizes from {low} to {high}, or rebuild the bundle with a --batch MIN:OPT:MAX range "
                "that holds them.",
            )
    return sorted(set(requested))


def choose_targets(bundles: list[Bundle], cuda: bool) -> tuple[list[Target], list[dict]]:
    """Every runtime to time on every bundle (ordered runtime by runtime, so a dense and a reduced bundle
    take turns back to back), and the engines that cannot run here, with the reason."""
    found, skipped, here = [], [], {}
    for b in bundles:
        for g in planned(b.spec.precision, b.spec.io_fp16, b.spec.plugins):
            plugin = g.lowering == "plugin"
            runtime = f"onnxruntime CPU {g.precision}" + (" plugin graph" if plugin else "")
            found.append(Target(b, runtime, "ort", b.path / g.file, None if plugin else runtime, plugin))
        model = timing_model(b.spec)
        gpu = [("PyTorch eager CUDA fp16", "torch-cuda-fp16"), ("PyTorch CUDA graph fp16", "torch-cuda-graph-fp16")]
        for runtime, kind in [("PyTorch eager CPU fp32", "torch")] + (gpu if cuda else []):
            found.append(Target(b, runtime, kind, model, runtime))
        for folder, entry in all_entries(b.path):
            name = entry["runtime"]
            runtime = (f"{targets.LABEL[name]} {entry['runtime_version']} {entry['target']} "
                       f"{precision_of(b.path / entry['graph'])}")
            plugin = has_plugins(b.path / entry["graph"])
            try:
                check_runnable(b.path, folder, entry, here)
            except ExporterError as e:
                skipped.append({"bundle": b.label, "runtime": runtime + (" plugin graph" if plugin else ""),
                                "engine": f"{ENGINES_DIR}/{folder}/{entry['engine']}", "reason": e.problem})
                continue
            where = (b.path, folder, entry)
            found.append(Target(b, runtime + (" plugin graph" if plugin else ""), name, where, runtime))
    order = {runtime: i for i, runtime in enumerate(dict.fromkeys(t.runtime for t in found))}
    found.sort(key=lambda t: (KINDS.index(t.kind), order[t.runtime]))  # stable: bundles keep the order given
    return found, skipped


def measure(targets_: list[Target], batches: list[int], threads: int, rounds: int, iterations: int,
            log: Callable[[str], None] = print) -> tuple[dict, list[str]]:
    """(target index, batch) -> each call's ms per round, every runtime in its own process taking turns; and
    the lone-run lines (`timing.alone_note`)."""
    x = np.random.default_rng(0).standard_normal((max(batches), *targets_[0].bundle.input), dtype=np.float32)
    kinds = list(dict.fromkeys(t.kind for t in targets_))
    with contextlib.ExitStack() as stack:
        log(f"starting one process per runtime ({', '.join(kinds)})")
        processes = {}
        for kind in kinds:
            models = {i: t.model for i, t in enumerate(targets_) if t.kind == kind}
            processes[kind] = stack.enter_context(Runtime(kind, models, x, threads))
        timers = {(i, batch): (lambda n, i=i, batch=batch: processes[targets_[i].kind].latencies(i, n, batch))
                  for batch in batches for i in range(len(targets_))}
        times = interleaved(timers, rounds, iterations, log)
    lone = []
    for kind in kinds:  # each process alone on the machine: the others have ended
        i, t = next((i, t) for i, t in enumerate(targets_) if t.kind == kind)
        log(f"timing {t.bundle.label} in {t.runtime} alone")
        with Runtime(kind, {i: t.model}, x, threads) as alone:
            timer = {0: lambda n, rt=alone, i=i: rt.latencies(i, n, batches[0])}
            alone_ms = interleaved(timer, rounds, iterations, lambda _: None)[0]
        together = times[i, batches[0]]
        label = f"{t.bundle.label} at batch {batches[0]}"
        lone.append(alone_note(label, [(t.runtime, _flat(alone_ms), _flat(together))]))
    return times, lone


def _flat(rounds: list[list[float]]) -> list[float]:
    return [ms for r in rounds for ms in r]


def report(bundles: list[Bundle], targets_: list[Target], skipped: list[dict], batches: list[int], times: dict,
           lone: list[str], settings: dict) -> dict:
    """bench.json: the machine, the settings, the bundles, one row per (runtime, bundle, batch), skipped engines."""
    dense = {}
    for b in bundles:
        if b.spec.method == "none":
            dense.setdefault(b.spec.model, b)
    baseline = {b.label: dense.get(b.spec.model) if b.spec.method != "none" else None for b in bundles}
    rows = {}
    for batch in batches:
        for i, t in enumerate(targets_):
            base = baseline[t.bundle.label]
            rows[t.bundle.label, t.runtime, batch] = results.Row(
                t.bundle.label, t.runtime, batch, times[i, batch], t.reference_ops,
                (base.label, t.baseline) if base is not None and t.baseline else None,
                (t.bundle.manifest.get("flops") or {}).get("ratio"),
            )
    summaries = []
    for (_, _, batch), row in rows.items():
        base = rows.get((*row.baseline, batch)) if row.baseline else None
        summaries.append(results.summarise(row, base))
    return {
        "machine": machine.describe(settings["threads"]),
        "settings": {**settings, "batches": batches, "input": list(bundles[0].input), "cv_limit": results.CV_LIMIT},
        "bundles": [
            {"label": b.label, "run_name": b.manifest["run_name"], "path": str(b.path), "model": b.spec.model,
             "method": b.spec.method, "method_params": b.manifest.get("method_params"), "precision": b.spec.precision,
             "batch": str(b.spec.batch), "flops": b.manifest.get("flops"),
             "baseline": baseline[b.label].label if baseline[b.label] else None}
            for b in bundles
        ],
        "rows": summaries,
        "skipped": skipped,
        "alone": [line for line in lone if line],
    }


def write(bundles: list[Bundle], data: dict) -> None:
    """bench/bench.json, bench.md and bench.png into every bundle, each file written whole."""
    md = results.markdown(data)
    png = io.BytesIO()
    plot.figure(data).savefig(png, format="png", dpi=120)
    for b in bundles:
        write_bench(b.path, data, md, png.getvalue())


def run(paths: list[Path], requested: Optional[list[int]], threads: int, rounds: int, iterations: int,
        log: Callable[[str], None] = print) -> dict:
    """Time `paths` (bundles) and write the results into each; returns bench.json's content."""
    bundles = open_bundles(paths)
    batches = batch_sizes(bundles, requested)
    log("loading the PyTorch models and checking the engines")
    targets_, skipped = choose_targets(bundles, torch.cuda.is_available())
    times, lone = measure(targets_, batches, threads, rounds, iterations, log)
    data = report(bundles, targets_, skipped, batches, times, lone,
                  {"threads": threads, "rounds": rounds, "iterations": iterations})
    write(bundles, data)
    return data
