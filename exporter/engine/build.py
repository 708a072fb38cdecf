# SPDX-License-Identifier: Apache-2.0
"""`python -m exporter engine`: a bundle's ONNX to a TensorRT or TensorRT-RTX plan in engines/<target>-<runtime>/.

One code path for TensorRT 10.x, 11.x and TensorRT-RTX (their Python APIs agree on everything used
here), `exporter.engine.network`'s: strongly typed, an optimization profile over the bundle's recorded input
and batch range, TensorRT's timing cache in engines/<target>-tensorrt/timing.cache, and for the plugin graph
the bundle's plugin library. This module plans the build from the bundle, caches its plan by content, and
words its failures. TensorRT-RTX's ONNX parser opens `libtensorrt_rtx.so` for plugin nodes, which its wheel
lacks: unless that name resolves here, the plugin graph is built in a child process that can open it
(`network.build_in_child`), with the same outputs and errors as a build in this process.

TensorRT builds for the GPU it runs on. TensorRT-RTX builds ahead of time, on any x86-64 machine,
for the compute capability passed with --target.
"""
from __future__ import annotations

import datetime
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from .. import rtx_child
from ..bundle import (ENGINES_DIR, PLUGIN_LIBRARY, TIMING_CACHE, default_graph, graph_path, graph_sha256, has_plugins,
                      inside, precision_of, read_folder, read_intact, recorded_input, sha256, write_entry)
from ..bundle.trust import library as trusted_library
from ..console import make as make_console
from ..errors import ExporterError
from ..spec import BatchRange
from . import cache, network, targets
from .network import BuildFailure, Facts, Request, Stage
from .targets import LABEL, TENSORRT, TENSORRT_RTX

PLUGIN_LOG = "[exporter plugins] "  # how the plugin library's messages to TensorRT's logger begin


@dataclass
class EngineResult:
    folder: Path
    entry: dict
    cache_hit: bool
    why: str = ""  # why the cache missed


@dataclass(frozen=True)
class Plan:
    """What `build_engine` needs to know before any TensorRT call (and what the cache key covers)."""

    bundle: Path
    graph: Path
    plugin: Optional[Path]
    runtime: str
    version: str
    target: str
    gpu: str  # the GPU built on, or how an ahead-of-time RTX build was made
    input_name: str
    input_shape: tuple[int, ...]  # without the batch axis
    batch: BatchRange

    @property
    def flags(self) -> list[str]:
        # Strongly typed everywhere; kept in the key so a change of flags is a cache miss.
        return ["STRONGLY_TYPED"] + ([f"compute_capability={self.target}"] if self.runtime == TENSORRT_RTX else [])

    def key_fields(self) -> dict:
        return {
            "graph": self.graph.name,
            "graph_sha256": graph_sha256(self.graph),
            "plugin_sha256": sha256(self.plugin) if self.plugin else None,
            "precision": precision_of(self.graph),
            "input": self.input_name,
            "profile": {"min": self.batch.min, "opt": self.batch.opt, "max": self.batch.max, "shape": list(self.input_shape)},
            "runtime": self.runtime,
            "runtime_version": self.version,
            "target": self.target,
            "flags": self.flags,
        }


def plan(bundle: Path, graph: Optional[str], runtime: str, target: Optional[str]) -> tuple[Plan, object]:
    """Check every argument against the bundle, the runtime and the GPU present; (plan, runtime module)."""
    manifest, spec = read_intact(bundle)  # an engine of the graphs that were verified
    runtime = targets.check_runtime_name(runtime)
    wanted = targets.parse_target(target) if target else None
    path = graph_path(bundle, graph)
    plugin = None
    if has_plugins(path):
        plugin = bundle / PLUGIN_LIBRARY
        if not plugin.is_file():
            status = manifest.get("plugin_library") or {}
            why = f": its build skipped it ({status['reason']})" if status.get("status") == "skipped" else ""
            standard = default_graph(bundle)
            raise ExporterError(f"{bundle} has {path.name} but no plugin library {PLUGIN_LIBRARY}{why}.",
                                "Rebuild the bundle with `python -m exporter build ... --plugins` where cmake, nvcc and "
                                "TensorRT's headers are found (TRT_INCLUDE_DIR; see exporter/plugins/README.md), or pass "
                                f"--graph {standard} for the standard graph.")
        plugin = trusted_library(bundle)  # native code from the bundle: only when this run trusts it
    trt = targets.import_runtime(runtime)
    version = trt.__version__
    if runtime == TENSORRT_RTX:
        offered = targets.rtx_targets(trt)
        if wanted is None:
            raise ExporterError("TensorRT-RTX builds ahead of time and needs the GPU's compute capability.",
                                f"Pass --target, one of {', '.join(offered)} (e.g. sm86 for an RTX 30xx).")
        targets.check_rtx_target(wanted, offered, version)
        gpu = f"no GPU (ahead of time, {platform.machine()} host)"
    else:
        found = targets.gpu_present()
        if found is None:
            raise ExporterError(f"TensorRT {version} builds an engine for the GPU it runs on, and this machine has no CUDA GPU.",
                                "Run this command on the target (Jetson or datacenter GPU), or build for an RTX GPU here "
                                "with --runtime tensorrt-rtx --target sm86.")
        if wanted and wanted != found.target:
            raise ExporterError(f"--target {wanted} asks for another GPU than this one ({found.name}, {found.target}); "
                                "TensorRT builds for the GPU it runs on.",
                                f"Run on an {wanted} GPU, or drop --target to build for {found.target}.")
        wanted, gpu = found.target, found.name
    targets.check_precision(precision_of(path), wanted)
    name, shape = recorded_input(manifest["io"], path.name)
    return Plan(bundle, path, plugin, runtime, version, wanted, gpu, name, shape, spec.batch), trt


def build_engine(bundle: Path, graph: Optional[str] = None, runtime: str = TENSORRT, target: Optional[str] = None,
                 force: bool = False, console: Optional[Console] = None) -> EngineResult:
    console = console or make_console()
    p, trt = plan(bundle, graph, runtime, target)
    folder = inside(bundle, (ENGINES_DIR, targets.folder(p.target, p.runtime)), create=True)  # never a link elsewhere
    with cache.locked(folder, console):
        return _build_or_reuse(p, trt, folder, force, console)


def _build_or_reuse(p: Plan, trt, folder: Path, force: bool, console: Console) -> EngineResult:
    """The cached engine if its key matches (and not `force`), else a new build recorded in engine.json."""
    fields = p.key_fields()
    wanted = cache.key(fields)
    engine_name = p.graph.name.removesuffix(".onnx") + ".engine"
    if not force:
        hit = cache.lookup(folder, p.graph.name, wanted)
        if hit:
            return EngineResult(folder, hit, True)
    why = _why_miss(read_folder(folder, p.bundle)["entries"].get(p.graph.name), fields, force)
    # a spinner with an elapsed clock: TensorRT reports no useful progress for most of a build
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console, transient=True) as bar:
        bar.add_task(f"build {LABEL[p.runtime]} {p.version} engine for {p.target} from {p.graph.name} (one-time, may take minutes)")
        facts = _build(trt, p, folder / TIMING_CACHE, folder / engine_name)  # written whole by the bundle's writer
    entry = {
        "engine": engine_name,
        "graph": p.graph.name,
        "key": wanted,
        "key_fields": fields,
        "runtime": p.runtime,
        "runtime_version": p.version,
        "target": p.target,
        "gpu": p.gpu,
        "flags": p.flags,
        "timing_cache": facts.timing_cache,
        "num_layers": facts.num_layers,
        "plugin_layers": facts.num_plugin_layers,
        "plugin_library": PLUGIN_LIBRARY if p.plugin else None,
        "build_seconds": facts.build_seconds,
        "bytes": (folder / engine_name).stat().st_size,
        "sha256": sha256(folder / engine_name, p.bundle),
        "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": f"{platform.machine()} {platform.node()}",
    }
    write_entry(folder, p.graph.name, entry, p.bundle)
    return EngineResult(folder, entry, False, why)


def _why_miss(old: Optional[dict], fields: dict, force: bool) -> str:
    if force:
        return "--force"
    if not old:
        return "no engine for this graph and target yet"
    changed = [k for k in fields if old.get("key_fields", {}).get(k) != fields[k]]
    return ("changed: " + ", ".join(changed)) if changed else "the plan file differs from its manifest"


def _build(trt, p: Plan, timing_cache: Path, out: Path) -> Facts:
    """The plan written to `out` (`exporter.engine.network`; in a child process for a TensorRT-RTX plugin graph
    unless libtensorrt_rtx.so resolves here); its failures as ExporterErrors."""
    request = Request(p.graph, p.input_name, p.input_shape, p.batch.as_tuple(), p.plugin,
                      p.target.upper() if p.runtime == TENSORRT_RTX else None, timing_cache, out)
    try:
        if p.plugin and p.runtime == TENSORRT_RTX and not rtx_child.link_resolvable():
            return network.build_in_child(trt, request, f"the {LABEL[p.runtime]} build of {p.graph.name}")
        return network.build(trt, request)
    except BuildFailure as failure:
        raise _refusal(p, failure) from None


def _refusal(p: Plan, failure: BuildFailure) -> ExporterError:
    """`engine`'s words for a failed build: what failed, with the fix."""
    facts, label, graph = failure.facts, LABEL[p.runtime], p.graph.name
    version = facts.version
    logged = "; ".join(facts.log_errors) or "no error was logged"
    check = "Check the graph with `python -m exporter verify`; report the error with the bundle's manifest.json."
    rebuild = "Rebuild the bundle with `python -m exporter build` (its TensorRT-RTX check names the node), or use another --graph."
    if failure.stage == Stage.BUILDER:
        return ExporterError(f"{label} could not create a builder: {logged}.", "Check the CUDA driver and the runtime's installation.")
    if failure.stage == Stage.PLUGIN_LIBRARY:
        return ExporterError(f"{label} could not load the plugin library {PLUGIN_LIBRARY}: {logged}.",
                             "Rebuild it for this machine (it must export getCreators and setLoggerFinder), then rerun with --force.")
    if failure.stage == Stage.PARSE:
        errors = [f"node '{e.node}' ({e.operator}): {e.desc.rstrip('.')}" for e in failure.parse_errors]
        plugins_said = [e for e in facts.log_errors if e.startswith(PLUGIN_LOG)]
        return ExporterError(f"The {label} {version} ONNX parser rejected {graph}: {'; '.join(errors + plugins_said or facts.log_errors)}.",
                             rebuild)
    if failure.stage == Stage.INPUTS:
        return ExporterError(f"{label} {version} cannot build {graph} for the bundle's input and batch: {failure.detail}.", rebuild)
    if failure.stage == Stage.BUILD:
        return ExporterError(f"The {label} {version} builder failed on {graph}: {logged}.", check)
    said = f" (the plugin library logged: {'; '.join(facts.log_errors)})" if facts.log_errors else ""  # Stage.PROCESS
    return ExporterError(f"The process building {graph} with {label} {version} {failure.detail}{said}.", check)
