# SPDX-License-Identifier: Apache-2.0
"""The TensorRT-RTX parse + build of a bundle's graphs, each in a child process started as soon as its graph is
complete, so the checks run alongside the other stages (a DeiT-S graph takes about 6 s of one core, and the parity
check beside it is onnxruntime and PyTorch on the other).

`build` starts a graph's check right after writing it; `verify` starts them all before its parity check; both
collect the results in their "TensorRT-RTX parse + build" stage (`results`). A plugin graph is checked with the
bundle's plugin library loaded only when this run trusts it (`bundle.trust`), else skipped: the library's code would
run on load; it starts once the library is in the bundle. An fp8 graph is built for SM89 (Ada, the first RTX
architecture with fp8 tensor cores), every other one for the default SM86. Leaving the context early (an error,
Ctrl-C) stops every child still running.
"""
from __future__ import annotations

from pathlib import Path

from ..bundle import PLUGIN_LIBRARY, Graph
from ..bundle.trust import ENABLE, library as trusted_library, untrusted
from ..engine.rtx_check import PendingCheck, RtxCheck, start_rtx_check
from ..spec import BuildSpec


class RtxChecks:
    """The checks of one bundle's graphs by file name: `start(g)` when g is complete, `results(graphs)` waits."""

    def __init__(self, bundle: Path, spec: BuildSpec, size: tuple[int, int]):
        self._bundle, self._spec, self._size = bundle, spec, size
        self._pending: dict[str, PendingCheck] = {}

    def __enter__(self) -> "RtxChecks":
        return self

    def __exit__(self, *exc) -> None:
        for pending in self._pending.values():
            pending.kill()

    def start(self, g: Graph) -> None:
        """Start `g`'s check (once); a plugin graph's is left for later while the plugin library is not in the bundle."""
        if g.file not in self._pending and (g.lowering != "plugin" or (self._bundle / PLUGIN_LIBRARY).is_file()):
            self._pending[g.file] = self._started(g)

    def results(self, graphs: list[Graph]) -> dict[str, RtxCheck]:
        """Every graph's check, waited for; those not started yet are started now."""
        for g in graphs:
            if g.file not in self._pending:
                self._pending[g.file] = self._started(g)
        return {g.file: self._pending[g.file].result() for g in graphs}

    def _started(self, g: Graph) -> PendingCheck:
        target = {"compute_capability": "SM89"} if g.precision == "fp8" else {}
        check = dict(batch=self._spec.batch.as_tuple(), input_shape_tail=(3, *self._size), **target)
        if g.lowering != "plugin":
            return start_rtx_check(self._bundle / g.file, **check)
        if not (self._bundle / PLUGIN_LIBRARY).is_file():
            return _said("skipped", f"no plugin library in the bundle ({PLUGIN_LIBRARY}): cmake, nvcc or TensorRT "
                                    "headers were missing at build time")
        if (reason := untrusted(self._bundle)) is not None:
            return _said("skipped", f"{reason}; to run this check: {ENABLE[0].lower() + ENABLE[1:]}")
        return start_rtx_check(self._bundle / g.file, plugin_library=trusted_library(self._bundle), **check)


def _said(status: str, reason: str) -> PendingCheck:
    return PendingCheck(lambda: RtxCheck(status, reason))
