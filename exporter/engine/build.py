"""`python -m exporter engine`: a bundle's ONNX to a TensorRT or TensorRT-RTX plan in engines/<target>-<runtime>/.

One code path for TensorRT 10.x, 11.x and TensorRT-RTX (their Python APIs agree on everything used
here): the network is strongly typed (fp16 comes from the fp16 ONNX graph; TensorRT 11 has no fp16
builder flag, and on 10.x STRONGLY_TYPED makes the graph's types binding), an optimization profile
spans the bundle's batch range, TensorRT's timing cache (engines/<target>-tensorrt/timing.cache) is
loaded before and saved after every build (TensorRT-RTX 1.2+ makes timing-cache calls no-ops, so its
builds skip it), and for the plugin graph the bundle's plugin library is loaded
into the builder's plugin registry first. TensorRT-RTX's ONNX parser opens `libtensorrt_rtx.so` for plugin
nodes, which its wheel lacks: unless that name resolves here, the plugin graph is built in a child process
that can open it (`exporter.rtx_child`), with the same outputs and errors as a build in this process.

TensorRT builds for the GPU it runs on. TensorRT-RTX builds ahead of time, on any x86-64 machine,
for the compute capability passed with --target.
"""
from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from .. import rtx_child
from ..bundle import (PLUGIN_LIBRARY, TIMING_CACHE, default_graph, engines_dir, graph_path, graph_sha256, has_plugins,
                      precision_of, read_folder, read_intact, recorded_input, sha256, write_entry)
from ..console import make as make_console
from ..errors import ExporterError
from ..spec import BatchRange
from . import cache, targets
from .rtx_check import error_logger
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

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "bundle": str(self.bundle), "graph": str(self.graph),
                "plugin": str(self.plugin) if self.plugin else None}

    @classmethod
    def from_json(cls, d: dict) -> "Plan":
        return cls(**{**d, "bundle": Path(d["bundle"]), "graph": Path(d["graph"]),
                      "plugin": Path(d["plugin"]) if d["plugin"] else None,
                      "input_shape": tuple(d["input_shape"]), "batch": BatchRange(**d["batch"])})

    def shapes(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        return tuple((b, *self.input_shape) for b in self.batch.as_tuple())  # type: ignore[return-value]


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
    name, shape = recorded_input(manifest["io"], path.name)
    return Plan(bundle, path, plugin, runtime, version, wanted, gpu, name, shape, spec.batch), trt


def build_engine(bundle: Path, graph: Optional[str] = None, runtime: str = TENSORRT, target: Optional[str] = None,
                 force: bool = False, console: Optional[Console] = None) -> EngineResult:
    console = console or make_console()
    p, trt = plan(bundle, graph, runtime, target)
    folder = engines_dir(bundle) / targets.folder(p.target, p.runtime)
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
    why = _why_miss(read_folder(folder)["entries"].get(p.graph.name), fields, force)
    tmp = folder / f".{engine_name}.tmp"
    try:
        # a spinner with an elapsed clock: TensorRT reports no useful progress for most of a build
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console, transient=True) as bar:
            bar.add_task(f"build {LABEL[p.runtime]} {p.version} engine for {p.target} from {p.graph.name} (one-time, may take minutes)")
            if p.plugin and p.runtime == TENSORRT_RTX and not rtx_child.link_resolvable():
                notes = _build_in_child(p, folder / TIMING_CACHE, tmp)
            else:
                notes = _build(trt, p, folder / TIMING_CACHE, tmp)
        os.replace(tmp, folder / engine_name)
    finally:
        tmp.unlink(missing_ok=True)
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
        "timing_cache": notes["timing_cache"],
        "num_layers": notes["num_layers"],
        "plugin_layers": notes["plugin_layers"],
        "plugin_library": PLUGIN_LIBRARY if p.plugin else None,
        "build_seconds": notes["build_seconds"],
        "bytes": (folder / engine_name).stat().st_size,
        "sha256": sha256(folder / engine_name),
        "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": f"{platform.machine()} {platform.node()}",
    }
    write_entry(folder, p.graph.name, entry)
    return EngineResult(folder, entry, False, why)


def _why_miss(old: Optional[dict], fields: dict, force: bool) -> str:
    if force:
        return "--force"
    if not old:
        return "no engine for this graph and target yet"
    changed = [k for k in fields if old.get("key_fields", {}).get(k) != fields[k]]
    return ("changed: " + ", ".join(changed)) if changed else "the plan file differs from its manifest"


def _build(trt, p: Plan, timing_cache: Path, out: Path) -> dict:
    """Parse, configure (strongly typed, profile, timing cache, target), build and write the plan to `out`; notes for
    the manifest entry."""
    start = time.perf_counter()
    logger = error_logger(trt)
    builder = trt.Builder(logger)
    if builder is None:
        raise ExporterError(f"{LABEL[p.runtime]} could not create a builder: {'; '.join(logger.errors) or 'no error was logged'}.",
                            "Check the CUDA driver and the runtime's installation.")
    if p.plugin:
        _load_plugin(trt, builder, p)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):  # TensorRT 11 accepts and ignores it
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(p.graph)):
        errors = [f"node '{e.node_name()}' ({e.node_operator()}): {e.desc().rstrip('.')}" for e in (parser.get_error(i) for i in range(parser.num_errors))]
        plugins_said = [e for e in logger.errors if e.startswith(PLUGIN_LOG)]
        raise ExporterError(f"The {LABEL[p.runtime]} {p.version} ONNX parser rejected {p.graph.name}: {'; '.join(errors + plugins_said or logger.errors)}.",
                            "Rebuild the bundle with `python -m exporter build` (its TensorRT-RTX check names the node), or use another --graph.")
    config = builder.create_builder_config()
    if p.runtime == TENSORRT_RTX:
        config.num_compute_capabilities = 1
        config.set_compute_capability(getattr(trt.ComputeCapability, p.target.upper()), 0)
    if p.batch.dynamic:
        profile = builder.create_optimization_profile()
        profile.set_shape(p.input_name, *p.shapes())
        config.add_optimization_profile(profile)
    note = "not used (timing-cache operations are no-ops in TensorRT-RTX since 1.2)"
    if p.runtime == TENSORRT:
        note = _use_timing_cache(config, timing_cache)
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise ExporterError(f"The {LABEL[p.runtime]} {p.version} builder failed on {p.graph.name}: "
                            f"{'; '.join(logger.errors) or 'no error was logged'}.",
                            "Check the graph with `python -m exporter verify`; report the error with the bundle's manifest.json.")
    if p.runtime == TENSORRT:
        serialized = config.get_timing_cache().serialize()
        tmp = timing_cache.with_name(f".{timing_cache.name}.tmp")
        tmp.write_bytes(bytes(serialized))
        os.replace(tmp, timing_cache)
    seconds = round(time.perf_counter() - start, 2)
    out.write_bytes(bytes(blob))
    plugin_layers = sum(network.get_layer(i).type == trt.LayerType.PLUGIN_V3 for i in range(network.num_layers)) if p.plugin else 0
    return {"timing_cache": note, "num_layers": network.num_layers, "plugin_layers": plugin_layers, "build_seconds": seconds}


def _build_in_child(p: Plan, timing_cache: Path, out: Path) -> dict:
    """`_build` in a child process that can open libtensorrt_rtx.so (`exporter.rtx_child`), which TensorRT-RTX's ONNX
    parser opens for plugin nodes; its failures come back as the same ExporterErrors."""
    request = {"plan": p.to_json(), "timing_cache": str(timing_cache), "out": str(out)}
    child = rtx_child.run(f"{__name__}:_child", request, f"the {LABEL[p.runtime]} build of {p.graph.name}")
    if child.answer is not None:
        return child.answer
    messages = child.plugin_messages()
    logged = f" (the plugin library logged: {'; '.join(messages)})" if messages else ""
    if child.error is not None:
        raise ExporterError(child.error.problem.removesuffix(".") + logged + ".", child.error.fix)
    raise ExporterError(f"The process building {p.graph.name} with {LABEL[p.runtime]} {p.version} {child.death()}{logged}.",
                        "Check the graph with `python -m exporter verify`; report the error with the bundle's manifest.json.")


def _child(request: dict) -> dict:
    """In the child of `_build_in_child`: the build."""
    p = Plan.from_json(request["plan"])
    return _build(targets.import_runtime(p.runtime), p, Path(request["timing_cache"]), Path(request["out"]))


def _use_timing_cache(config, path: Path) -> str:
    """Load the folder's timing cache into `config` (a fresh one when absent or unfit); what happened."""
    old = path.read_bytes() if path.is_file() else b""
    tcache = config.create_timing_cache(old)
    if old and tcache is not None and config.set_timing_cache(tcache, False):
        return "reused"
    tcache = config.create_timing_cache(b"")
    config.set_timing_cache(tcache, False)
    return "replaced (the stored one did not fit this TensorRT or GPU)" if old else "new"


def _load_plugin(trt, builder, p: Plan) -> None:
    handle = builder.get_plugin_registry().load_library(str(p.plugin))
    if handle is None:
        raise ExporterError(f"{LABEL[p.runtime]} could not load the plugin library {PLUGIN_LIBRARY}.",
                            "Rebuild it for this machine (it must export getCreators and setLoggerFinder), then rerun with --force.")
