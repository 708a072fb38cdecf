"""TensorRT-RTX parse-and-build check: CI's stand-in for TensorRT.

TensorRT itself cannot be installed without NVIDIA's package index, but the `tensorrt_rtx` wheel's
ONNX parser and builder run on a machine without a GPU, and catch what a static lint cannot: shape,
type and layer-validation errors of a real parse and build. Its parser is newer than TensorRT 10.3's
(1.7 accepts a ScatterND with reduction='none', which 10.3 rejects), so it complements
`lint.check_tensorrt` rather than replacing it.

Networks are strongly typed (TensorRT-RTX's only mode, requested explicitly anyway): an fp16 graph
builds as fp16, with no precision flags. The engine is built to prove it can be; its bytes are dropped,
never written into a bundle. There is no GPU to ask what to build for, so the engine targets one compute
capability (SM86 unless told otherwise).

With a plugin library (`plugin_library`, the token ops' `libexporter_plugins.so`), its creators are
registered and the graph's custom nodes parse into PLUGIN_V3 layers. That parse and build run in a
child process (`exporter.rtx_child`): the wheel's ONNX parser opens `libtensorrt_rtx.so` when it meets a
plugin node, the wheel ships only `libtensorrt_rtx.so.1`, and the process would abort.
"""
from __future__ import annotations

import collections
import dataclasses
import importlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from .. import rtx_child
from ..bundle import from_record
from ..errors import ExporterError

MISSING = "tensorrt_rtx is not installed (pip install 'exporter[rtx]' / tensorrt-rtx-cu13)"


@dataclass
class RtxCheck:
    """The outcome of `rtx_check`."""

    status: str  # "passed" | "failed" | "skipped"
    reason: str = ""  # why it failed or was skipped
    num_layers: int = 0  # layers in the parsed network
    build_seconds: float = 0.0
    parse_errors: list[str] = field(default_factory=list)  # one per parser error, naming the node
    engine_bytes: int = 0  # size of the serialized engine (the engine itself is discarded)
    version: str = ""  # tensorrt_rtx version
    layer_dtypes: dict[str, int] = field(default_factory=dict)  # output types of the network's layers
    layer_types: dict[str, int] = field(default_factory=dict)  # layers per type, e.g. {"PLUGIN_V3": 1}
    num_plugin_layers: int = 0  # PLUGIN_V3 layers (custom nodes parsed into plugins of `plugin_library`)
    plugin_names: list[str] = field(default_factory=list)  # their plugins' names, one per layer
    outputs: dict[str, tuple[list[int], str]] = field(default_factory=dict)  # name -> (shape, -1 dynamic), dtype
    compute_capability: str = ""  # the engine's target, e.g. "SM86"
    log_errors: list[str] = field(default_factory=list)  # every error TensorRT logged (plugins' messages included)
    plugin_calls: dict[str, int] = field(default_factory=dict)  # "ToMeMerge::getOutputShapes" -> calls by TensorRT

    @classmethod
    def from_dict(cls, record: dict) -> "RtxCheck":
        return from_record(cls, record)


DEFAULT_COMPUTE_CAPABILITY = "SM86"


def rtx_check(
    onnx_path: Path | str,
    input_name: str = "input",
    batch: tuple[int, int, int] = (1, 1, 1),
    input_shape_tail: Sequence[int] = (3, 224, 224),
    plugin_library: Optional[Path] = None,
    compute_capability: str = DEFAULT_COMPUTE_CAPABILITY,
) -> RtxCheck:
    """Parse `onnx_path` (weights beside it) with TensorRT-RTX and build an engine for `batch` = (min, opt, max).

    `input_name` gets the shapes (b, *input_shape_tail); every other input whose only dynamic dimension is the
    first takes the same batch range. `plugin_library`: a TensorRT plugin library to load first (the parse and
    build then run in a subprocess, see the module docstring). `compute_capability`: the engine's target, a
    `tensorrt_rtx.ComputeCapability` name.
    """
    if not Path(onnx_path).is_file():
        raise ExporterError(f"ONNX graph '{onnx_path}' does not exist", "pass the path of an exported .onnx file")
    if not 1 <= batch[0] <= batch[1] <= batch[2]:
        raise ExporterError(f"batch {tuple(batch)} is not (min, opt, max) with 1 <= min <= opt <= max",
                            "pass e.g. --batch 1:8:32")
    try:
        trt = importlib.import_module("tensorrt_rtx")
    except ImportError:
        return RtxCheck("skipped", MISSING)
    if not hasattr(trt, "ComputeCapability") or not hasattr(trt.ComputeCapability, compute_capability):
        offered = [n for n in dir(getattr(trt, "ComputeCapability", None)) if n.startswith("SM")]
        raise ExporterError(f"TensorRT-RTX {trt.__version__} cannot target compute capability '{compute_capability}'",
                            f"pass one of {', '.join(offered) or 'its ComputeCapability names'}")
    if plugin_library is not None:
        return _check_in_subprocess(onnx_path, input_name, batch, input_shape_tail, Path(plugin_library),
                                    compute_capability)
    return _check(trt, onnx_path, input_name, batch, input_shape_tail, None, compute_capability)


def _check(trt, onnx_path, input_name, batch, input_shape_tail, plugin_library, compute_capability) -> RtxCheck:
    version = trt.__version__
    logger = error_logger(trt)
    builder = trt.Builder(logger)
    if plugin_library is not None and builder.get_plugin_registry().load_library(str(plugin_library)) is None:
        return RtxCheck("failed", f"TensorRT-RTX {version} could not load the plugin library {plugin_library}: "
                        + ("; ".join(logger.errors) or "no error was logged"), version=version)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [_parse_error(parser.get_error(i)) for i in range(parser.num_errors)] or logger.errors
        return RtxCheck("failed", f"the TensorRT-RTX {version} ONNX parser rejected the graph",
                        parse_errors=errors, version=version, log_errors=logger.errors)
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    dtypes = collections.Counter(layer.get_output_type(j).name for layer in layers for j in range(layer.num_outputs))
    plugins = [layer for layer in layers if layer.type == trt.LayerType.PLUGIN_V3]
    outputs = {network.get_output(i).name: (list(network.get_output(i).shape), network.get_output(i).dtype.name)
               for i in range(network.num_outputs)}
    result = RtxCheck("failed", num_layers=network.num_layers, version=version, layer_dtypes=dict(dtypes),
                      layer_types=dict(collections.Counter(layer.type.name for layer in layers)),
                      num_plugin_layers=len(plugins), plugin_names=[_plugin_name(trt, layer) for layer in plugins],
                      outputs=outputs, compute_capability=compute_capability, log_errors=logger.errors)

    inputs = {network.get_input(i).name: network.get_input(i) for i in range(network.num_inputs)}
    if input_name not in inputs:
        result.reason = f"the graph has no input '{input_name}' (inputs: {', '.join(inputs)})"
        return result
    config = builder.create_builder_config()
    if hasattr(config, "num_compute_capabilities"):  # TensorRT-RTX: no GPU here to build for
        config.num_compute_capabilities = 1
        config.set_compute_capability(getattr(trt.ComputeCapability, compute_capability), 0)
    shapes = [(b, *input_shape_tail) for b in batch]
    graph_shape = tuple(inputs[input_name].shape)
    profile = builder.create_optimization_profile()
    if any(d < 0 for d in graph_shape):
        profile.set_shape(input_name, *shapes)
    elif batch[0] != batch[2] or graph_shape != shapes[0]:
        result.reason = f"input '{input_name}' is fixed at {list(graph_shape)}, but batch {batch} asks for {shapes}"
        return result
    for name, tensor in inputs.items():
        shape = tuple(tensor.shape)
        if name == input_name or all(d >= 0 for d in shape):
            continue
        if any(d < 0 for d in shape[1:]):
            result.reason = f"input '{name}' has dynamic dimensions besides the batch: {list(shape)}"
            return result
        profile.set_shape(name, *[(b, *shape[1:]) for b in batch])
    if any(any(d < 0 for d in tensor.shape) for tensor in inputs.values()):
        config.add_optimization_profile(profile)

    start = time.perf_counter()
    engine = builder.build_serialized_network(network, config)
    result.build_seconds = round(time.perf_counter() - start, 2)
    if engine is None:
        result.reason = "the TensorRT-RTX builder failed: " + ("; ".join(logger.errors) or "no error was logged")
        return result
    result.engine_bytes = engine.nbytes
    del engine
    result.status = "passed"
    return result


def _plugin_name(trt, layer) -> str:
    """The plugin name of a PLUGIN_V3 layer (its IPluginV3's core capability)."""
    layer.__class__ = trt.IPluginV3Layer  # the bindings' downcast idiom (get_layer returns an ILayer)
    return layer.plugin.get_capability_interface(trt.PluginCapabilityType.CORE).plugin_name


def _check_in_subprocess(onnx_path, input_name, batch, input_shape_tail, plugin_library: Path,
                         compute_capability: str) -> RtxCheck:
    """`_check` with the plugin library, in a child process that can open `libtensorrt_rtx.so` (`rtx_child`)."""
    if not plugin_library.is_file():
        raise ExporterError(f"plugin library '{plugin_library}' does not exist",
                            "build it with exporter.ops.library.build_library (needs cmake, CUDA and TensorRT headers)")
    request = {"onnx_path": str(Path(onnx_path).resolve()), "input_name": input_name, "batch": list(batch),
               "input_shape_tail": list(input_shape_tail), "plugin_library": str(plugin_library.resolve()),
               "compute_capability": compute_capability}
    what = f"the TensorRT-RTX check with {plugin_library.name}"
    try:  # libexporter_plugins.so names every call it gets on stderr
        child = rtx_child.run(f"{__name__}:_child", request, what, _CHILD_TIMEOUT_S, {"EXPORTER_PLUGINS_TRACE": "1"})
    except ExporterError as e:
        return RtxCheck("failed", e.problem, compute_capability=compute_capability)
    if child.answer is None:
        reason = child.error.problem if child.error else f"{what} {child.death()}"
        return RtxCheck("failed", reason, compute_capability=compute_capability)
    fields = child.answer
    fields["outputs"] = {k: (list(v[0]), v[1]) for k, v in fields["outputs"].items()}
    fields["plugin_calls"] = dict(collections.Counter(
        line.split(rtx_child.TRACE, 1)[1].strip() for line in child.stderr.splitlines() if rtx_child.TRACE in line))
    # TensorRT-RTX 1.7's logger finder finds no logger while parsing and building: the library's messages
    # reach stderr instead
    fields["log_errors"] += child.plugin_messages()
    return RtxCheck(**fields)


_CHILD_TIMEOUT_S = 900


def _child(request: dict) -> dict:
    """In the child of `_check_in_subprocess`: one check."""
    trt = importlib.import_module("tensorrt_rtx")
    result = _check(trt, request["onnx_path"], request["input_name"], tuple(request["batch"]),
                    tuple(request["input_shape_tail"]), Path(request["plugin_library"]), request["compute_capability"])
    return dataclasses.asdict(result)


def _parse_error(error) -> str:
    code = str(error.code()).split(".")[-1]
    return f"node '{error.node_name()}' ({error.node_operator()}): {error.desc()} [{code}]"


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

