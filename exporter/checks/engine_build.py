"""TensorRT-RTX parse-and-build check: CI's stand-in for TensorRT.

TensorRT itself cannot be installed without NVIDIA's package index, but the `tensorrt_rtx` wheel's
ONNX parser and builder run on a machine without a GPU, and catch what a static lint cannot: shape,
type and layer-validation errors of a real parse and build. Its parser is newer than TensorRT 10.3's
(1.7 accepts a ScatterND with reduction='none', which 10.3 rejects), so it complements
`lint.check_tensorrt` rather than replacing it.

Networks are strongly typed (TensorRT-RTX's only mode, requested explicitly anyway): an fp16 graph
builds as fp16, with no precision flags. The engine is built to prove it can be; its bytes are dropped,
never written into a bundle.
"""
from __future__ import annotations

import collections
import importlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from exporter.errors import ExporterError

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


def rtx_check(
    onnx_path: Path | str,
    input_name: str = "input",
    batch: tuple[int, int, int] = (1, 1, 1),
    input_shape_tail: Sequence[int] = (3, 224, 224),
) -> RtxCheck:
    """Parse `onnx_path` (weights beside it) with TensorRT-RTX and build an engine for `batch` = (min, opt, max)."""
    if not Path(onnx_path).is_file():
        raise ExporterError(f"ONNX graph '{onnx_path}' does not exist", "pass the path of an exported .onnx file")
    if not 1 <= batch[0] <= batch[1] <= batch[2]:
        raise ExporterError(f"batch {tuple(batch)} is not (min, opt, max) with 1 <= min <= opt <= max",
                            "pass e.g. --batch 1:8:32")
    try:
        trt = importlib.import_module("tensorrt_rtx")
    except ImportError:
        return RtxCheck("skipped", MISSING)
    version = trt.__version__
    logger = _logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [_parse_error(parser.get_error(i)) for i in range(parser.num_errors)] or logger.errors
        return RtxCheck("failed", f"the TensorRT-RTX {version} ONNX parser rejected the graph",
                        parse_errors=errors, version=version)
    dtypes = collections.Counter(
        network.get_layer(i).get_output_type(j).name
        for i in range(network.num_layers) for j in range(network.get_layer(i).num_outputs))
    result = RtxCheck("failed", num_layers=network.num_layers, version=version, layer_dtypes=dict(dtypes))

    inputs = {network.get_input(i).name: network.get_input(i) for i in range(network.num_inputs)}
    if input_name not in inputs:
        result.reason = f"the graph has no input '{input_name}' (inputs: {', '.join(inputs)})"
        return result
    config = builder.create_builder_config()
    shapes = [(b, *input_shape_tail) for b in batch]
    graph_shape = tuple(inputs[input_name].shape)
    if any(d < 0 for d in graph_shape):
        profile = builder.create_optimization_profile()
        profile.set_shape(input_name, *shapes)
        config.add_optimization_profile(profile)
    elif batch[0] != batch[2] or graph_shape != shapes[0]:
        result.reason = f"input '{input_name}' is fixed at {list(graph_shape)}, but batch {batch} asks for {shapes}"
        return result

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


def _parse_error(error) -> str:
    code = str(error.code()).split(".")[-1]
    return f"node '{error.node_name()}' ({error.node_operator()}): {error.desc()} [{code}]"


def _logger(trt):
    """A TensorRT logger that keeps error messages (for the failure reason) and drops the rest."""

    class Collect(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg):
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                self.errors.append(msg)

    return Collect()
