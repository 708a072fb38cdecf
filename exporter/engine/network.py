# SPDX-License-Identifier: Apache-2.0
"""One TensorRT / TensorRT-RTX build of an ONNX graph: parse, configure, build, and the facts of what was built.

The build's and verify's TensorRT-RTX check (`rtx_check`) and the `engine` command (`build`) both build here, and
word a `BuildFailure` each in their own way: the check records it, `engine` raises an ExporterError with its fix.

- parse: the network is strongly typed (fp16 comes from the fp16 ONNX graph: TensorRT 11 has no fp16 builder flag,
  on 10.x STRONGLY_TYPED makes the graph's types binding, TensorRT-RTX knows no other mode). For a plugin graph the
  plugin library is loaded into the builder's registry first, so its custom nodes parse into PLUGIN_V3 layers.
- configure: an optimization profile gives the named input (b, *shape) for b over the batch range, and every
  other input whose only dynamic dimension is the first the same range. TensorRT-RTX builds ahead of time, for
  one compute capability. TensorRT loads its timing cache before the build and saves it after; TensorRT-RTX 1.2+
  makes timing-cache calls no-ops, so its builds skip it.
- build: the serialized plan is written to `Request.out`, or dropped (a check only proves it builds).
- facts (`Facts`): layers per type and per output dtype, the plugin layers and their plugins' names, the outputs'
  shapes and dtypes, the seconds from parse to plan, the plan's size and every error the logger got.

TensorRT-RTX's ONNX parser opens `libtensorrt_rtx.so` for plugin nodes, which its wheel lacks: `build_in_child`
runs the same build in a child process that can open it (`exporter.rtx_child`), and adds the plugin library's
messages that no logger got and the plugin methods TensorRT called.
"""
from __future__ import annotations

import collections
import dataclasses
import importlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .. import interrupt, rtx_child
from ..bundle import read_inside, write_bytes


class Stage:
    """Where a build failed (`BuildFailure.stage`)."""

    BUILDER = "builder"  # no builder could be created
    PLUGIN_LIBRARY = "plugin library"  # the plugin library did not load
    PARSE = "parse"  # the ONNX parser rejected the graph (`BuildFailure.parse_errors`)
    INPUTS = "inputs"  # the graph's inputs do not fit the recorded input and batch range (`BuildFailure.detail`)
    BUILD = "build"  # the builder returned no plan
    PROCESS = "process"  # the child process ended without an answer (`BuildFailure.detail` says how)


@dataclass(frozen=True)
class Request:
    """What to build: `graph` (weights beside it) with `input_name` at (b, *input_shape) for b in `batch`."""

    graph: Path
    input_name: str
    input_shape: tuple[int, ...]  # without the batch axis
    batch: tuple[int, int, int]  # min, opt, max
    plugin_library: Optional[Path] = None  # loaded into the builder's plugin registry before parsing
    compute_capability: Optional[str] = None  # TensorRT-RTX's target, a ComputeCapability name ("SM86"); None: TensorRT
    timing_cache: Optional[Path] = None  # TensorRT's timing cache, loaded before and saved after the build
    out: Optional[Path] = None  # where the plan is written; None: it is dropped

    def to_json(self) -> dict:
        return {k: str(v.absolute()) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_json(cls, d: dict) -> "Request":
        paths = {k: Path(d[k]) if d[k] is not None else None for k in ("graph", "plugin_library", "timing_cache", "out")}
        return cls(**{**d, **paths, "input_shape": tuple(d["input_shape"]), "batch": tuple(d["batch"])})


@dataclass
class ParseError:
    """One error of the ONNX parser, naming the node."""

    node: str
    operator: str
    desc: str
    code: str  # the ErrorCode's name, e.g. "UNSUPPORTED_NODE"


@dataclass
class Facts:
    """What a build found: the parsed network (zero before a parse), the plan and what was logged."""

    version: str  # the runtime's
    num_layers: int = 0
    layer_dtypes: dict[str, int] = field(default_factory=dict)  # layer outputs per dtype, e.g. {"HALF": 120}
    layer_types: dict[str, int] = field(default_factory=dict)  # layers per type, e.g. {"PLUGIN_V3": 2}
    num_plugin_layers: int = 0
    plugin_names: list[str] = field(default_factory=list)  # the plugin of each PLUGIN_V3 layer
    outputs: dict[str, tuple[list[int], str]] = field(default_factory=dict)  # name -> (shape, -1 dynamic), dtype
    build_seconds: float = 0.0  # from the parse to the plan (0 when the build was not reached)
    plan_bytes: int = 0
    timing_cache: str = "not used"  # what happened to TensorRT's timing cache
    log_errors: list[str] = field(default_factory=list)  # every error logged (a child's plugin messages included)
    plugin_calls: dict[str, int] = field(default_factory=dict)  # in a child: "ToMeMerge::clone" -> calls by TensorRT

    @classmethod
    def from_json(cls, d: dict) -> "Facts":
        return cls(**{**d, "outputs": {k: (list(v[0]), v[1]) for k, v in d["outputs"].items()}})


class BuildFailure(Exception):
    """A build that stopped at `stage` (a `Stage`), with the facts known by then."""

    def __init__(self, stage: str, facts: Facts, detail: str = "", parse_errors: Optional[list[ParseError]] = None):
        super().__init__(f"{stage}: {detail or '; '.join(facts.log_errors) or 'no error was logged'}")
        self.stage, self.facts, self.detail, self.parse_errors = stage, facts, detail, parse_errors or []

    def to_json(self) -> dict:
        return {"stage": self.stage, "facts": dataclasses.asdict(self.facts), "detail": self.detail,
                "parse_errors": [dataclasses.asdict(e) for e in self.parse_errors]}

    @classmethod
    def from_json(cls, d: dict) -> "BuildFailure":
        return cls(d["stage"], Facts.from_json(d["facts"]), d["detail"], [ParseError(**e) for e in d["parse_errors"]])


RTX_TIMING_CACHE = "not used (timing-cache operations are no-ops in TensorRT-RTX since 1.2)"


def build(trt, request: Request) -> Facts:
    """Parse, configure and build `request` with `trt` (tensorrt or tensorrt_rtx) in this process; raises
    BuildFailure. Ctrl-C and SIGTERM during it cancel the build and end the run (`interrupt.held`): raised inside
    TensorRT's callbacks, their exception would be swallowed and the run would go on."""
    with interrupt.held() as pending:
        return _build(trt, request, pending)


def _build(trt, request: Request, pending: list[int]) -> Facts:
    start = time.perf_counter()
    logger = error_logger(trt)
    facts = Facts(trt.__version__, log_errors=logger.errors)  # the logger's list: it grows as the build goes on
    builder = trt.Builder(logger)
    if builder is None:
        raise BuildFailure(Stage.BUILDER, facts)
    if request.plugin_library is not None and builder.get_plugin_registry().load_library(str(request.plugin_library)) is None:
        raise BuildFailure(Stage.PLUGIN_LIBRARY, facts)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):  # TensorRT 11 accepts and ignores it
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(request.graph)):
        raise BuildFailure(Stage.PARSE, facts, parse_errors=[_parse_error(parser.get_error(i)) for i in range(parser.num_errors)])
    _describe(trt, network, facts)

    config = builder.create_builder_config()
    monitor = _cancel_on_signal(trt, pending) if hasattr(trt, "IProgressMonitor") else None  # kept alive while building
    if monitor is not None:  # TensorRT 10+, TensorRT-RTX: a pending signal cancels the build
        config.progress_monitor = monitor
    _set_profile(builder, config, network, request, facts)
    timing_cache = request.timing_cache
    if request.compute_capability:  # TensorRT-RTX: no GPU here to build for
        config.num_compute_capabilities = 1
        config.set_compute_capability(getattr(trt.ComputeCapability, request.compute_capability), 0)
        timing_cache, facts.timing_cache = None, RTX_TIMING_CACHE
    if timing_cache is not None:
        facts.timing_cache = use_timing_cache(config, timing_cache)
    plan = builder.build_serialized_network(network, config)
    facts.build_seconds = round(time.perf_counter() - start, 2)
    if plan is None:
        raise BuildFailure(Stage.BUILD, facts)
    if timing_cache is not None:
        write_bytes(timing_cache, config.get_timing_cache().serialize())
    facts.plan_bytes = memoryview(plan).nbytes
    if request.out is not None:
        write_bytes(request.out, plan)  # the one writer: a link planted at the plan's name is replaced, not followed
    return facts


def build_in_child(trt, request: Request, what: str, timeout_s: Optional[float] = None) -> Facts:
    """`build` in a child process that can open libtensorrt_rtx.so (`exporter.rtx_child`); raises the same
    BuildFailure, or one at Stage.PROCESS when the child ends without an answer. `what` names the work for the
    ExporterErrors of `rtx_child.run` (no library to link to, over `timeout_s`), which pass through."""
    with start_in_child(trt, request, what, timeout_s) as running:  # Ctrl-C while waiting stops the child
        return child_facts(trt, running.wait())


def start_in_child(trt, request: Request, what: str, timeout_s: Optional[float] = None) -> rtx_child.Running:
    """`build_in_child`'s child, left running: `child_facts(trt, running.wait())` is its outcome."""
    # libexporter_plugins.so names every call it gets on stderr
    return rtx_child.start(f"{__name__}:_child", {"runtime": trt.__name__, "request": request.to_json()}, what,
                           timeout_s, {"EXPORTER_PLUGINS_TRACE": "1"})


def child_facts(trt, child: rtx_child.Child) -> Facts:
    """The facts of the build a child of `start_in_child` made; raises its BuildFailure (or its ExporterError)."""
    if child.error is not None:
        raise child.error
    calls = dict(collections.Counter(
        line.split(rtx_child.TRACE, 1)[1].strip() for line in child.stderr.splitlines() if rtx_child.TRACE in line))
    # TensorRT-RTX 1.7's logger finder finds no logger while parsing and building: the library's messages reach
    # stderr instead
    said = child.plugin_messages()
    if child.answer is None:
        raise BuildFailure(Stage.PROCESS, Facts(trt.__version__, log_errors=said, plugin_calls=calls), child.death())
    failure = BuildFailure.from_json(child.answer["failure"]) if "failure" in child.answer else None
    facts = failure.facts if failure else Facts.from_json(child.answer["facts"])
    facts.log_errors += said
    facts.plugin_calls = calls
    if failure:
        raise failure
    return facts


def _child(request: dict) -> dict:
    """In the child of `build_in_child`: the build, its facts or its failure."""
    try:
        return {"facts": dataclasses.asdict(build(importlib.import_module(request["runtime"]),
                                                  Request.from_json(request["request"])))}
    except BuildFailure as failure:
        return {"failure": failure.to_json()}


def _describe(trt, network, facts: Facts) -> None:
    """The parsed network's layers, plugins and outputs into `facts`."""
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    plugins = [layer for layer in layers if layer.type == trt.LayerType.PLUGIN_V3]
    outputs = [network.get_output(i) for i in range(network.num_outputs)]
    facts.num_layers = network.num_layers
    facts.layer_dtypes = dict(collections.Counter(layer.get_output_type(j).name for layer in layers for j in range(layer.num_outputs)))
    facts.layer_types = dict(collections.Counter(layer.type.name for layer in layers))
    facts.num_plugin_layers = len(plugins)
    facts.plugin_names = [_plugin_name(trt, layer) for layer in plugins]
    facts.outputs = {t.name: (list(t.shape), t.dtype.name) for t in outputs}


def _set_profile(builder, config, network, request: Request, facts: Facts) -> None:
    """The batch range's optimization profile on `config` where an input is dynamic; BuildFailure at Stage.INPUTS
    where the graph's inputs do not fit the request."""
    inputs = {network.get_input(i).name: tuple(network.get_input(i).shape) for i in range(network.num_inputs)}
    name, batch = request.input_name, request.batch
    if name not in inputs:
        raise BuildFailure(Stage.INPUTS, facts, f"the graph has no input '{name}' (inputs: {', '.join(inputs)})")
    shapes = [(b, *request.input_shape) for b in batch]
    profile = builder.create_optimization_profile()
    if any(d < 0 for d in inputs[name]):
        profile.set_shape(name, *shapes)
    elif batch[0] != batch[2] or inputs[name] != shapes[0]:
        raise BuildFailure(Stage.INPUTS, facts, f"input '{name}' is fixed at {list(inputs[name])}, but batch {batch} asks for {shapes}")
    for other, shape in inputs.items():
        if other == name or all(d >= 0 for d in shape):
            continue
        if any(d < 0 for d in shape[1:]):
            raise BuildFailure(Stage.INPUTS, facts, f"input '{other}' has dynamic dimensions besides the batch: {list(shape)}")
        profile.set_shape(other, *[(b, *shape[1:]) for b in batch])
    if any(any(d < 0 for d in shape) for shape in inputs.values()):
        config.add_optimization_profile(profile)


def use_timing_cache(config, path: Path) -> str:
    """Load the timing cache at `path` into `config` (a fresh one when absent or unfit); what happened."""
    old = read_inside(path, kind="cache") if path.exists() or path.is_symlink() else b""
    tcache = config.create_timing_cache(old)
    if old and tcache is not None and config.set_timing_cache(tcache, False):
        return "reused"
    tcache = config.create_timing_cache(b"")
    config.set_timing_cache(tcache, False)
    return "replaced (the stored one did not fit this TensorRT or GPU)" if old else "new"


def _plugin_name(trt, layer) -> str:
    """The plugin name of a PLUGIN_V3 layer (its IPluginV3's core capability)."""
    layer.__class__ = trt.IPluginV3Layer  # the bindings' downcast idiom (get_layer returns an ILayer)
    return layer.plugin.get_capability_interface(trt.PluginCapabilityType.CORE).plugin_name


def _parse_error(error) -> ParseError:
    return ParseError(error.node_name(), error.node_operator(), error.desc(), str(error.code()).split(".")[-1])


def _cancel_on_signal(trt, pending: list[int]):
    """A progress monitor that tells TensorRT to stop building once a signal is pending."""

    class Cancel(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name, parent_phase, num_steps):
            pass

        def step_complete(self, phase_name, step):
            return not pending

        def phase_finish(self, phase_name):
            pass

    return Cancel()


def error_logger(trt):
    """A TensorRT logger that keeps error messages (for the failure reason) and drops the rest."""

    class Collect(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg):
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                self.errors.append(msg)

    return Collect()
