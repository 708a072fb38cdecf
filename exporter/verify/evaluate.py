# SPDX-License-Identifier: Apache-2.0
"""Evaluating a bundle's graphs, for `build` and `verify` alike: graph checks, parity against PyTorch, the
TensorRT-RTX parse and build, onnxruntime on the stored PyTorch references and (verify) the engines that can
run here. The result is the `Report`; nothing is written."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional

import torch

from ..bundle import FP16, PLUGIN_LIBRARY, REFERENCES, Graph, has_references, read_references
from ..bundle.trust import untrusted
from ..checks import graph as graph_check
from ..checks import parity
from ..checks.compare import TorchAnswers, compare_graphs, verify_batches
from ..checks.inputs import once_per_input
from ..checks.parity import StoredComparison
from ..console import escape
from ..errors import ExporterError
from ..methods.flops import count_gmacs
from ..models import input_size
from ..runtime import Runner, onnx_runner
from ..spec import QUANTIZED, BuildSpec
from ..stages.progress import Stages
from . import engines as engine_stage
from . import references
from .engines import EngineRow
from .report import Flops, Report
from .rtx_checks import rtx_checks


def evaluate(spec: BuildSpec, dense, model, bundle: Path, graphs: list[Graph], stage: Stages, fp16_facts=None,
             engine: Optional[str] = None, run_engines: bool = False, cut_from_twins: bool = False,
             answers: Optional[TorchAnswers] = None) -> Report:
    """Graph checks, parity against PyTorch, the TensorRT-RTX build, the stored references and (verify) the
    engines; returns the report (writes nothing). Build's: `cut_from_twins`, the graphs were cut from their debug
    twins in this run, and `answers`, PyTorch's answers it stored as references (see `checks.compare.compare_graphs`)."""
    size = input_size(dense)
    open_graph = _sessions()
    with stage("check graphs (onnx.checker, static shapes, TensorRT 10.3 ops)") as found:
        problems = {g.file: graph_check.check_graph(bundle / g.file).problems for g in graphs}
        if fp16_facts and fp16_facts["unguarded_selectors"]:
            problems[FP16].append(
                f"token choices made in fp16 at {fp16_facts['unguarded_selectors']} (scores must be fp32)"
            )
        found.problems = sum(map(len, problems.values()))
    exact = [g for g in graphs if g.precision not in QUANTIZED]  # 8-bit graphs are judged on data (verify.quantized)
    with stage("verify against PyTorch") as found:
        comparisons = compare_graphs(model, bundle, exact, spec.batch, size, open_graph=open_graph,
                                     cut_from_twins=cut_from_twins, answers=answers)
        found.problems = sum(len(c.failures) or not c.passed for c in comparisons)
    loaded = (bundle / PLUGIN_LIBRARY).is_file() and untrusted(bundle) is None
    with stage("TensorRT-RTX parse + build" + (" (plugin library loaded)" if loaded else "")) as found:
        checked = rtx_checks(bundle, spec, size, graphs)
        found.problems = sum(r.status == "failed" for r in checked.values())
        if all(r.status == "skipped" for r in checked.values()):
            found.skipped = next(iter(checked.values())).reason
    for graph, r in checked.items():
        if r.status == "skipped" and not found.skipped:
            stage.console.print(f"[yellow]skipped[/yellow] the TensorRT-RTX check of {graph}: {escape(r.reason)}")
    # verify holds the stored references at every batch size; build, whose parity check has just run every size on
    # the same held-out images, checks them once, at the range's opt (the references' added samples included)
    sizes = verify_batches(spec.batch) if run_engines else [spec.batch.opt]
    stored, engines = _stored_and_engines(spec, bundle, exact, stage, engine, run_engines, open_graph, sizes)
    report = Report(
        run_name=spec.run_name,
        spec=spec,
        schedule=model.schedule,
        method_params=model.params,  # defaults resolved (e.g. DiffRate's flops budget and its counts)
        flops=_flops(dense, model, size),
        thresholds=(
            f"fp32: max abs <= {parity.FP32_MAX_ABS:g}, top-1 agreement 100%; fp16: min cosine >= "
            f"{parity.FP16_MIN_COSINE}, top-1 agreement 100% on decisive samples (top-1/top-2 margin > 2x error); "
            f"a sample with token flips (replayed) is compared with PyTorch replaying onnxruntime's choices: in fp32 "
            f"on at most {parity.MAX_FLIP_FRACTION:.0%} of the samples, in fp16 where the fp32 score margin the "
            f"graph's choice overturns, at the first that differs, is <= {parity.NEAR_TIE:g}x the fp16 error of those "
            "scores (else the flip fails)"
        ),
        comparisons=comparisons,
        lint=problems,
        tensorrt_rtx=checked,
        notes=list(getattr(model, "notes", [])),
        references=stored,
        engines=engines,
    )
    for line in report.warnings() + report.notes:
        stage.console.print(f"[yellow]warning[/yellow] {escape(line)}")
    return report


def on_stored_references(spec: BuildSpec, bundle: Path, graphs: list[Graph], stage: Stages, engine: Optional[str]) -> Report:
    """verify --references-only: the build's report (its own checks as recorded), with onnxruntime and the
    engines re-run on references.npz."""
    if not has_references(bundle):
        raise ExporterError(f"{bundle} has no {REFERENCES} (built by an older exporter).",
                            "Run `python -m exporter verify` without --references-only, or rebuild the bundle.")
    stored, engines = _stored_and_engines(spec, bundle, graphs, stage, engine, True, _sessions(),
                                          verify_batches(spec.batch))
    return replace(Report.read(bundle), references=stored, engines=engines)


def _sessions() -> Callable[[Path], Runner]:
    """Opens a graph in onnxruntime once, however many checks run it (a session on DeiT-S takes seconds), and runs it
    on a batch once, however many checks run that batch: the stored references begin with parity's held-out images."""
    opened: dict[Path, Runner] = {}

    def open_graph(path: Path) -> Runner:
        if path not in opened:
            opened[path] = once_per_input(onnx_runner(path))
        return opened[path]

    return open_graph


def _stored_and_engines(spec, bundle, graphs, stage, engine, run_engines, open_graph, sizes: list[int]) -> tuple[list[StoredComparison], list[EngineRow]]:
    """onnxruntime on the stored PyTorch references at batch `sizes`, and (verify) every engine that can run here."""
    refs = read_references(bundle)
    stored = []
    if refs is not None:
        with stage("onnxruntime on the stored PyTorch references"):
            for g in graphs:
                stored += references.check(refs, open_graph(bundle / g.file), g.file, g.precision, sizes,
                                           "onnxruntime (CPU)")
    if not run_engines:
        return stored, engine_stage.built(bundle)
    with stage("engines on the stored PyTorch references"):
        engines = engine_stage.check_engines(bundle, verify_batches(spec.batch), engine)
    for e in engines:
        if e.status == "skipped":
            stage.console.print(f"[yellow]skipped[/yellow] engines/{e.folder}/{e.engine}: {escape(e.reason)}")
    return stored, engines


def _flops(dense: torch.nn.Module, model: torch.nn.Module, size) -> Flops:
    dense_gmacs = count_gmacs(dense, size)
    gmacs = count_gmacs(model, size)
    return Flops(round(dense_gmacs, 4), round(gmacs, 4), round(dense_gmacs / gmacs, 4))
