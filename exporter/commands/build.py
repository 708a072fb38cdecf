# SPDX-License-Identifier: Apache-2.0
"""`python -m exporter build`: model → method → ONNX (fp32, fp16, plugin graphs) → graph checks → verification →
bundle.

Every stage is timed and shown as it runs; the bundle is assembled in a temp dir and only renamed into place once
everything passed (see `bundle.staging`).
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Optional

import torch
from rich.console import Console

from .. import __version__, ops
from ..bundle import (CALIBRATION, FP16, REFERENCES, SIGNATURE, check_space, checkpoint_record,
                      debug_dir, graph_io, keep_failed, planned, staging, write_json, write_manifest, write_reports,
                      write_schedule)
from ..bundle.signature import load_private_key, sign
from ..checks.compare import TorchAnswers
from ..console import make as make_console
from ..engine import scripts
from ..errors import BuildFailed, ExporterError
from ..export.onnx_export import OUTPUT_NAME, keep_outputs
from ..export.parallel import SecondProcess, export_here
from ..export.quantize import quantize
from ..models import input_size
from ..options import resolve
from ..runtime import op_reference
from ..spec import QUANTIZED, BuildSpec
from ..stages.calibration import batches, open_calibration
from ..stages.facts import git_commit, tool_versions
from ..stages.library import build_plugin_library
from ..stages.model import prepare
from ..stages.progress import Stages
from ..verify import references
from ..verify.evaluate import evaluate
from ..verify.quantized import judge


def build(spec: BuildSpec, out: Path, command: str, console: Optional[Console] = None, sign_key: Optional[Path] = None) -> Path:
    """Build `spec` into `out`/<run name> (`command`: the command line, recorded); the bundle's path, or
    BuildFailed with the failed build kept beside it for inspection. With `sign_key` (a private key), the bundle is
    signed last, before it is published."""
    console = console or make_console()
    if sign_key is not None:
        load_private_key(sign_key)  # a wrong key fails now, not after the build
    spec = resolve(spec)
    stage = Stages(console)
    with staging(out, spec.run_name) as tmp, debug_dir() as debug:
        with stage(f"load {spec.model} and apply method {spec.method}"):
            dense, model = prepare(spec)
            size = input_size(dense)
            token_ops = _token_ops(spec, model, size) if spec.plugins else ()
            calibration = open_calibration(spec, dense, size, dense.num_classes) if spec.precision in QUANTIZED else None
        check_space(out, disk_needed(spec, model, size))  # a full disk is refused here, not after the export
        kwargs = dict(img_size=size, batch=spec.batch.as_tuple(), opset=spec.opset)
        graphs = planned(spec.precision, spec.io_fp16, spec.plugins)
        library_status = quantized = None
        answers = TorchAnswers(model)  # PyTorch on the held-out images, for the references and the parity check
        with SecondProcess(model, graphs, tmp, debug, kwargs) as elsewhere:  # the fp32 graphs, where it pays
            facts = {}
            for g in [g for g in graphs if g.precision not in QUANTIZED and g not in elsewhere.graphs]:
                with stage(f"export {g.precision} ONNX" + (" (token ops as plugin nodes)" if g.lowering == "plugin" else "")):
                    facts[g.file] = export_here(model, g, tmp, debug, kwargs)
            for g in [g for g in graphs if g.precision in QUANTIZED]:
                source = next(s for s in graphs if s.precision == "fp32" and s.lowering == g.lowering)
                with stage(f"quantize {source.file} to {g.precision} (calibrated on {spec.calib_samples} images of --calib)"):
                    record = _quantize(source, g, tmp, debug, calibration, spec)
                quantized = record if quantized is None else {**quantized, "plugins": _plugin_record(g, record)}
            if spec.plugins:
                with stage("build the plugin library") as outcome:
                    dtypes = ["fp32"] + (["fp16"] if spec.precision == "fp16" else [])  # the plugin graphs' token dtypes
                    library_status = build_plugin_library(tmp, token_ops, dtypes, spec.archs)
                    outcome.skipped = library_status.get("reason")
            with stage(f"store PyTorch references ({REFERENCES})"):
                references.store(model, size, tmp, answers)
            facts.update(elsewhere.finish(stage))
        fp16_facts = facts.get(FP16)
        io = {g.file: graph_io(tmp / g.file) for g in graphs}
        scripts.write(tmp, spec, command, io, git_commit())  # reproduce.sh and build_engine.sh, from the graphs' I/O
        write_schedule(tmp, spec)  # a searched schedule the spec holds, kept as its file
        report = evaluate(spec, dense, model, tmp, graphs, stage, fp16_facts, cut_from_twins=True, answers=answers)
        if quantized is not None:
            g, *more = [g for g in graphs if g.precision in QUANTIZED]  # the standard graph, then the plugin graph's
            names = " and ".join(x.file for x in (g, *more))
            with stage(f"judge {names} on {len(calibration.held_out)} held-out images") as found:
                quantized["judged"] = judge(model, tmp / g.file, g.debug, tmp / FP16, calibration, spec.batch.max,
                                            spec.weights, more=[(tmp / x.file, x.debug) for x in more])
                found.problems = len(quantized["judged"].get("failures", []))
            write_json(tmp / CALIBRATION, quantized)
            report.quantized = quantized["judged"]
            if not report.quantized["judged"]:
                console.print(f"[yellow]warning[/yellow] {g.file}: {report.quantized['reason']}")
        write_reports(tmp, report.to_dict(), report.markdown())  # before the manifest, whose hashes cover them
        if not report.passed:
            kept = keep_failed(tmp, out, spec.run_name)
            raise BuildFailed("\n".join(report.failures()), kept)
        write_manifest(tmp, {
            "exporter_version": __version__,
            "run_name": spec.run_name,
            "command": command,
            "spec": spec.to_dict(),
            "git_commit": git_commit(),
            "tools": tool_versions(),
            "opset": spec.opset,
            "stages_seconds": stage.durations,
            "schedule": report.schedule,
            "method_params": report.method_params,
            "flops": asdict(report.flops),
            "fp16": fp16_facts,
            **({"quantized": _summary(quantized)} if quantized else {}),
            "plugin_library": library_status,
            "io": io,
            **checkpoint_record(spec),
        })
        if sign_key is not None:
            with stage(f"sign the bundle ({SIGNATURE})"):
                console.print(f"signed with key {sign(tmp, sign_key)}", markup=False)
    return out / spec.run_name


BYTES_PER_WEIGHT = {"fp16": 2, "int8": 1, "fp8": 1}  # fp32 otherwise


def disk_needed(spec: BuildSpec, model: torch.nn.Module, size: tuple[int, int]) -> int:
    """A lower bound on the bytes a bundle of `spec` takes: each graph's weights (4 bytes, 2 in the fp16 graphs, 1 in the 8-bit ones;
    the plugin graphs again), and the stored references' inputs (compressed fp16: over a byte per value, 1.4
    measured on test_vit)."""
    weights = sum(p.numel() for p in model.parameters())
    graphs = planned(spec.precision, spec.io_fp16, spec.plugins)
    return sum(weights * BYTES_PER_WEIGHT.get(g.precision, 4) for g in graphs) + references.FP16_HELD * 3 * size[0] * size[1]


def _token_ops(spec: BuildSpec, model: torch.nn.Module, size) -> list[str]:
    """The token ops the model calls, whose kernels the plugin library needs; --plugins needs at least one (a
    method's, or LITv2's HiLo window attention)."""
    called = sorted(ops.called(model, torch.zeros(1, 3, *size)))
    if not called:
        raise ExporterError(
            f"--plugins lowers token operations to TensorRT plugins, and {spec.model} with method "
            f"'{spec.method}' calls no token operation.",
            "Pass --method evit, evovit, diffrate or tome, or a LITv2 model with Hi-Fi heads (HiLo window "
            "attention), with --plugins; or drop --plugins.",
        )
    return called


def _quantize(fp32, graph, bundle: Path, debug: Path, calibration, spec: BuildSpec) -> dict:
    """The 8-bit `graph` from the fp32 one (its debug twin for a reduced model, so token choices can be compared),
    calibrated on the calibration images; returns the calibration record (calibration.json)."""
    source = fp32.debug or bundle / fp32.file
    images, _ = calibration.tensors(calibration.calibrate)
    target = debug / graph.file if fp32.debug else bundle / graph.file
    plugins = op_reference.session if graph.lowering == "plugin" else None  # plugin nodes run the reference ops
    record = quantize(source, target, graph.precision, batches(images, spec.batch.max), open_session=plugins)
    if fp32.debug:
        graph.debug = target
        keep_outputs(target, bundle / graph.file, [OUTPUT_NAME])
    return {**record, "images": {**calibration.record(), "seed": spec.seed}}


def _plugin_record(graph, record: dict) -> dict:
    """The plugin graph's part of calibration.json: its own Q/DQ placement and scales (same images, same method)."""
    return {"file": graph.file, **{k: record[k] for k in ("quantized_nodes", "high_precision", "activation_scales")}}


def _summary(quantized: dict) -> dict:
    """What the manifest says of the 8-bit graph (the whole record, scales included, is calibration.json)."""
    judged = quantized["judged"]
    return {"file": CALIBRATION, "calibration_method": quantized["calibration_method"],
            "calibrated_on": len(quantized["images"]["calibrated_on"]), "quantized_nodes": len(quantized["quantized_nodes"]),
            "high_precision_nodes": {k: len(v) for k, v in quantized["high_precision"].items()},
            "accuracy": judged.get("accuracy"), "token_choice_agreement": judged.get("token_choice_agreement"),
            "judged": judged["judged"],
            **({"plugins": {"file": quantized["plugins"]["file"], "quantized_nodes": len(quantized["plugins"]["quantized_nodes"]),
                            "high_precision_nodes": {k: len(v) for k, v in quantized["plugins"]["high_precision"].items()}}}
               if "plugins" in quantized else {})}
