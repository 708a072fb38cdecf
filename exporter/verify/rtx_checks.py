# SPDX-License-Identifier: Apache-2.0
"""The TensorRT-RTX parse + build of a bundle's graphs, each in a child process of its own, all at once.

A DeiT-S graph's check takes about 6 s of one core, and one build makes two to four graphs: run one after another
in this process they took 11-20 s, side by side in child processes 9.5-12 s on two cores (each child also imports
TensorRT-RTX, about 2.5 s). They start together once the other checks are done, not alongside them: on two cores the
parity check (onnxruntime and PyTorch, both cores) slowed by more than the checks gained.

A plugin graph is checked with the bundle's plugin library loaded only when this run trusts it (`bundle.trust`),
else skipped: the library's code would run on load. An fp8 graph is built for SM89 (Ada, the first RTX architecture
with fp8 tensor cores), every other one for the default SM86. An error or Ctrl-C while waiting stops every child.
"""
from __future__ import annotations

from pathlib import Path

from ..bundle import PLUGIN_LIBRARY, Graph
from ..bundle.trust import ENABLE, library as trusted_library, untrusted
from ..engine.rtx_check import PendingCheck, RtxCheck, start_rtx_check
from ..spec import BuildSpec


def rtx_checks(bundle: Path, spec: BuildSpec, size: tuple[int, int], graphs: list[Graph]) -> dict[str, RtxCheck]:
    """Every graph's check, by file name."""
    pending: list[PendingCheck] = []
    try:
        for g in graphs:
            pending.append(_started(bundle, spec, size, g))
        return {g.file: p.result() for g, p in zip(graphs, pending)}
    finally:
        for p in pending:
            p.kill()


def _started(bundle: Path, spec: BuildSpec, size: tuple[int, int], g: Graph) -> PendingCheck:
    target = {"compute_capability": "SM89"} if g.precision == "fp8" else {}
    check = dict(batch=spec.batch.as_tuple(), input_shape_tail=(3, *size), **target)
    if g.lowering != "plugin":
        return start_rtx_check(bundle / g.file, **check)
    if not (bundle / PLUGIN_LIBRARY).is_file():
        return _said(f"no plugin library in the bundle ({PLUGIN_LIBRARY}): cmake, nvcc or TensorRT headers were "
                     "missing at build time")
    if (reason := untrusted(bundle)) is not None:
        return _said(f"{reason}; to run this check: {ENABLE[0].lower() + ENABLE[1:]}")
    return start_rtx_check(bundle / g.file, plugin_library=trusted_library(bundle), **check)


def _said(reason: str) -> PendingCheck:
    return PendingCheck(lambda: RtxCheck("skipped", reason))
