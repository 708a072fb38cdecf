# SPDX-License-Identifier: Apache-2.0
"""Where everything lies in a bundle: every file name, and which graphs a spec's build writes.

    artifacts/<run>/
      manifest.json                      the build's record and the sha256 of every file below but engines/, bench/
      signature.sig                      `sign`'s signature of the manifest and every hashed file (optional)
      report.json, report.md             the build's report
      model.onnx, model.fp16.onnx        standard-op graphs (fp16 with --precision fp16, int8 or fp8)
      model.int8.onnx | model.fp8.onnx   with --precision int8|fp8: explicit Q/DQ graph; calibration.json beside it
      model.plugins.onnx, model.plugins.fp16.onnx, plugins/libexporter_plugins.so     with --plugins
      model.plugins.int8.onnx | model.plugins.fp8.onnx   with --plugins --precision int8|fp8: the plugin graph's Q/DQ twin
      references.npz                     PyTorch's answers on the held-out inputs
      reproduce.sh, build_engine.sh      the build's command; trtexec without the exporter
      engines/<target>-<runtime>/        engine.json, the plans, timing.cache (added on a target)
      engines/trtexec/                   build_engine.sh's engines
      bench/                             bench.json, bench.md, bench.png (added by `bench`)

The commands ask this module for a name; none writes one of its own.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import ExporterError

MANIFEST = "manifest.json"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
REFERENCES = "references.npz"
REPRODUCE = "reproduce.sh"
BUILD_ENGINE = "build_engine.sh"
PLUGIN_LIBRARY = "plugins/libexporter_plugins.so"  # with --plugins
SCHEDULE = "schedule.json"  # with diffrate --schedule FILE: the searched schedule the spec holds, for people and verify
SIGNATURE = "signature.sig"  # written by `sign` (or `build --sign`) after the manifest, so outside its hashes

FP32 = "model.onnx"
FP16 = "model.fp16.onnx"
PLUGINS = "model.plugins.onnx"
PLUGINS_FP16 = "model.plugins.fp16.onnx"
INT8 = "model.int8.onnx"  # with --precision int8: Q/DQ graph, calibrated
FP8 = "model.fp8.onnx"  # with --precision fp8
QUANTIZED_GRAPHS = {"int8": INT8, "fp8": FP8}
PLUGINS_QUANTIZED = {"int8": "model.plugins.int8.onnx", "fp8": "model.plugins.fp8.onnx"}  # with --plugins
CALIBRATION = "calibration.json"  # int8/fp8: how the 8-bit graph was calibrated, its scales, what stayed high precision
GRAPHS = {"fp32": FP32, "fp16": FP16, "plugins": PLUGINS, "plugins-fp16": PLUGINS_FP16, **QUANTIZED_GRAPHS,
          **{f"plugins-{p}": f for p, f in PLUGINS_QUANTIZED.items()}}  # --graph -> file

ENGINES_DIR = "engines"
ENGINE_JSON = "engine.json"  # in each engines/<target>-<runtime>/
TIMING_CACHE = "timing.cache"  # TensorRT's, in its engines/<target>-tensorrt/
TRTEXEC_DIR = f"{ENGINES_DIR}/trtexec"
RUNTIMES = ("tensorrt", "tensorrt-rtx")  # the runtimes an engine folder is built for
BENCH_DIR = "bench"
BENCH_JSON, BENCH_MD, BENCH_PNG = "bench.json", "bench.md", "bench.png"
# Subtrees outside the portable file hashes, written after the bundle on one machine: engines/<target>-<runtime>/
# holds plans built on (or for) one GPU and runtime, each with its own manifest (engine.json); bench/ the timings
# of `python -m exporter bench`, with the machine they were measured on.
UNHASHED_SUBTREES = (ENGINES_DIR, BENCH_DIR)


@dataclass
class Graph:
    file: str  # name inside the bundle
    precision: str
    io_fp16: bool = False
    lowering: str = "decompose"  # token ops as standard ops, or as plugin nodes ("plugin")
    debug: Optional[Path] = None  # the same graph with kept indices as outputs (reduced models), set by the export


def planned(precision: str, io_fp16: bool, plugins: bool = False) -> list[Graph]:
    """The graphs of a bundle: standard ops always; with `plugins`, the plugin-node twin of each (an 8-bit graph's
    after the fp32 graph it is quantized from)."""
    graphs = [Graph(FP32, "fp32")]
    if precision != "fp32":  # an 8-bit graph is judged next to the fp16 one
        graphs.append(Graph(FP16, "fp16", io_fp16))
    if precision in QUANTIZED_GRAPHS:
        graphs.append(Graph(QUANTIZED_GRAPHS[precision], precision))
    if plugins:
        graphs.append(Graph(PLUGINS, "fp32", lowering="plugin"))
        if precision == "fp16":
            graphs.append(Graph(PLUGINS_FP16, "fp16", io_fp16, lowering="plugin"))
        if precision in PLUGINS_QUANTIZED:
            graphs.append(Graph(PLUGINS_QUANTIZED[precision], precision, lowering="plugin"))
    return graphs


def choice_of(graph_file: str) -> Optional[str]:
    """The --graph choice that names `graph_file` (model.fp16.onnx -> fp16), None for another file."""
    return {v: k for k, v in GRAPHS.items()}.get(graph_file)


def precision_of(graph: Path | str) -> str:
    name = str(graph)
    return next((p for p in ("fp16", *QUANTIZED_GRAPHS) if name.endswith(f".{p}.onnx")), "fp32")


def has_plugins(graph: Path | str) -> bool:
    """A plugin graph: its engine needs the bundle's plugin library."""
    return Path(graph).name in (PLUGINS, PLUGINS_FP16, *PLUGINS_QUANTIZED.values())


def default_graph(bundle: Path) -> str:
    """The --graph an engine is built from by default: fp16 if the bundle has it, else fp32."""
    return "fp16" if (bundle / FP16).is_file() else "fp32"


def graph_path(bundle: Path, choice: Optional[str]) -> Path:
    """The ONNX file for --graph (default: `default_graph`), or a usage error."""
    if choice is None:
        choice = default_graph(bundle)
    if choice not in GRAPHS:
        raise ExporterError(f"--graph '{choice}' is not one of {', '.join(GRAPHS)}.",
                            "Use --graph fp16 (the deployment graph), fp32, plugins or plugins-fp16.")
    path = bundle / GRAPHS[choice]
    if not path.is_file():
        how = {
            "fp16": "rebuild it with `python -m exporter build ... --precision fp16`, or pass --graph fp32",
            "fp32": "rebuild the bundle with `python -m exporter build`",
            "plugins": "rebuild it with `python -m exporter build ... --plugins`, or pass --graph fp16",
            "plugins-fp16": "rebuild it with `python -m exporter build ... --plugins --precision fp16`, or pass --graph fp16",
            "int8": "rebuild it with `python -m exporter build ... --precision int8 --calib DIR`, or pass --graph fp16",
            "fp8": "rebuild it with `python -m exporter build ... --precision fp8 --calib DIR`, or pass --graph fp16",
            "plugins-int8": "rebuild it with `python -m exporter build ... --plugins --precision int8 --calib DIR`, or pass --graph int8",
            "plugins-fp8": "rebuild it with `python -m exporter build ... --plugins --precision fp8 --calib DIR`, or pass --graph fp8",
        }[choice]
        raise ExporterError(f"{bundle} has no {path.name} (the --graph {choice} graph).", how[0].upper() + how[1:] + ".")
    return path

