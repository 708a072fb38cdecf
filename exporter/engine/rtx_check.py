# SPDX-License-Identifier: Apache-2.0
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
registered and the graph's custom nodes parse into PLUGIN_V3 layers. That parse and build always run in a
child process (`network.build_in_child`): the wheel's ONNX parser opens `libtensorrt_rtx.so` when it meets a
plugin node, the wheel ships only `libtensorrt_rtx.so.1`, and the process would abort; a plugin that aborts
takes only the child down; and the child counts the plugin methods TensorRT called.

The parse and build are `exporter.engine.network`'s, shared with `engine`; this module words its failures.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from .. import rtx_child
from ..bundle import from_record
from ..errors import ExporterError
from . import network
from .network import BuildFailure, Facts, Request, Stage

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
    pending = start_rtx_check(onnx_path, input_name, batch, input_shape_tail, plugin_library, compute_capability,
                              alongside=False)
    try:
        return pending.result()
    finally:
        pending.kill()  # a plugin graph's child, when Ctrl-C stopped the wait


class PendingCheck:
    """An `rtx_check` under way (`start_rtx_check`): `result` waits for its outcome, `kill` stops its child."""

    def __init__(self, outcome: Callable[[], RtxCheck], running: Optional[rtx_child.Running] = None):
        self._outcome, self._running, self._result = outcome, running, None

    def result(self) -> RtxCheck:
        if self._result is None:
            self._result = self._outcome()
        return self._result

    def kill(self) -> None:
        if self._running is not None:
            self._running.kill()


def start_rtx_check(
    onnx_path: Path | str,
    input_name: str = "input",
    batch: tuple[int, int, int] = (1, 1, 1),
    input_shape_tail: Sequence[int] = (3, 224, 224),
    plugin_library: Optional[Path] = None,
    compute_capability: str = DEFAULT_COMPUTE_CAPABILITY,
    alongside: bool = True,
) -> PendingCheck:
    """`rtx_check`, started: with `alongside` its parse and build run in a child process while the caller goes on
    (a DeiT-S graph takes about 6 s of one core), else in `result()` (in this process, or in a child for a plugin
    library). Bad arguments raise ExporterError now."""
    if not Path(onnx_path).is_file():
        raise ExporterError(f"ONNX graph '{onnx_path}' does not exist", "pass the path of an exported .onnx file")
    if not 1 <= batch[0] <= batch[1] <= batch[2]:
        raise ExporterError(f"batch {tuple(batch)} is not (min, opt, max) with 1 <= min <= opt <= max",
                            "pass e.g. --batch 1:8:32")
    try:
        trt = importlib.import_module("tensorrt_rtx")
    except ImportError:
        return PendingCheck(lambda: RtxCheck("skipped", MISSING))
    if not hasattr(trt, "ComputeCapability") or not hasattr(trt.ComputeCapability, compute_capability):
        offered = [n for n in dir(getattr(trt, "ComputeCapability", None)) if n.startswith("SM")]
        raise ExporterError(f"TensorRT-RTX {trt.__version__} cannot target compute capability '{compute_capability}'",
                            f"pass one of {', '.join(offered) or 'its ComputeCapability names'}")
    if plugin_library is not None and not Path(plugin_library).is_file():
        raise ExporterError(f"plugin library '{plugin_library}' does not exist",
                            "build it with exporter.ops.library.build_library (needs cmake, CUDA and TensorRT headers)")
    request = Request(Path(onnx_path), input_name, tuple(input_shape_tail), tuple(batch),
                      Path(plugin_library) if plugin_library is not None else None, compute_capability)
    what = "the TensorRT-RTX check" + (f" with {request.plugin_library.name}" if request.plugin_library else "")
    if request.plugin_library is None and not alongside:
        return PendingCheck(lambda: _outcome(lambda: network.build(trt, request), request, what))
    try:
        running = network.start_in_child(trt, request, what, _CHILD_TIMEOUT_S)
    except ExporterError as e:  # the child could not be started
        return PendingCheck(lambda: RtxCheck("failed", e.problem, compute_capability=compute_capability))
    return PendingCheck(lambda: _outcome(lambda: network.child_facts(trt, running.wait()), request, what), running)


def _outcome(build: Callable[[], Facts], request: Request, what: str) -> RtxCheck:
    """The check's record of `build()`: passed with its facts, or failed with the reason."""
    capability = request.compute_capability
    try:
        facts = build()
    except ExporterError as e:  # the child ran over its time
        return RtxCheck("failed", e.problem, compute_capability=capability)
    except BuildFailure as failure:
        return _record("failed", failure.facts, capability, _reason(failure, request, what), _parse_errors(failure))
    return _record("passed", facts, capability)


_CHILD_TIMEOUT_S = 900


def _record(status: str, facts: Facts, compute_capability: str, reason: str = "",
            parse_errors: Optional[list[str]] = None) -> RtxCheck:
    return RtxCheck(status, reason, num_layers=facts.num_layers, build_seconds=facts.build_seconds,
                    parse_errors=parse_errors or [], engine_bytes=facts.plan_bytes, version=facts.version,
                    layer_dtypes=facts.layer_dtypes, layer_types=facts.layer_types,
                    num_plugin_layers=facts.num_plugin_layers, plugin_names=facts.plugin_names, outputs=facts.outputs,
                    compute_capability=compute_capability, log_errors=facts.log_errors, plugin_calls=facts.plugin_calls)


def _reason(failure: BuildFailure, request: Request, what: str) -> str:
    """The check's words for a failed build (`what`: the child's work, for Stage.PROCESS)."""
    version, logged = failure.facts.version, "; ".join(failure.facts.log_errors) or "no error was logged"
    if failure.stage == Stage.BUILDER:
        return f"TensorRT-RTX {version} could not create a builder: {logged}"
    if failure.stage == Stage.PLUGIN_LIBRARY:
        return f"TensorRT-RTX {version} could not load the plugin library {request.plugin_library}: {logged}"
    if failure.stage == Stage.PARSE:
        return f"the TensorRT-RTX {version} ONNX parser rejected the graph"
    if failure.stage == Stage.BUILD:
        return f"the TensorRT-RTX builder failed: {logged}"
    if failure.stage == Stage.PROCESS:
        return f"{what} {failure.detail}"
    return failure.detail  # Stage.INPUTS: the inputs' own sentence


def _parse_errors(failure: BuildFailure) -> list[str]:
    """One line per parser error, naming the node (the logger's errors where the parser listed none)."""
    if failure.stage != Stage.PARSE:
        return []
    return [f"node '{e.node}' ({e.operator}): {e.desc} [{e.code}]" for e in failure.parse_errors] or failure.facts.log_errors
