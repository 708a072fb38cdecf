# SPDX-License-Identifier: Apache-2.0
"""Exporting a bundle's fp16 graphs in a second process while this one exports the fp32 graphs and goes on.

Each export is a dynamo trace of the whole model plus the onnxscript optimizer: about 20 s of single-threaded
Python for DeiT-S, and a build exports the model twice (fp32 and fp16, see `export/fp16.py`) or four times (with
the plugin graphs). On a machine with two or more cores, a spawned process rebuilds the same model from the spec
(`stages.model.prepare`: the same weights, seed and method, so the same model) and exports the fp16 graphs, while
this process exports the fp32 ones and then does the build's next stages until it needs them. Each process writes
its own files, so the bundle is what one process would have written (tests/test_build.py compares).
"""
from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path
from typing import Optional

import torch

from ..bundle import Graph
from ..errors import ExporterError
from ..interrupt import end_with_parent
from ..spec import QUANTIZED, BuildSpec
from ..stages.model import prepare
from ..stages.progress import Stages
from .fold import fold_constants
from .graphs import export_graph


def export_here(model: torch.nn.Module, g: Graph, bundle: Path, debug: Path, kwargs: dict) -> Optional[dict]:
    """Export `g` into `bundle` (its debug twin into `debug`) and fold its constants; the fp16 graph's facts."""
    facts = export_graph(model, g, bundle, debug, **kwargs)
    fold_constants(bundle / g.file)
    return facts


class SecondProcess:
    """The fp16 graphs of `graphs`, exported by a spawned process (none where one core or one graph makes a second
    process pointless: `graphs` is then empty and `finish` returns nothing). Use as a context manager: leaving it
    early (an error, Ctrl-C) kills the process."""

    def __init__(self, spec: BuildSpec, graphs: list[Graph], bundle: Path, debug: Path, kwargs: dict):
        exported = [g for g in graphs if g.precision not in QUANTIZED]
        self.graphs = [g for g in exported if g.precision == "fp16"] if len(exported) > 1 and _cores() > 1 else []
        self._process = self._receive = None
        if self.graphs:
            # spawned, not forked: a fork of a process whose torch already ran OpenMP can hang
            context = multiprocessing.get_context("spawn")
            self._receive, send = context.Pipe(duplex=False)
            self._process = context.Process(target=_child, args=(send, os.getpid(), spec, self.graphs, bundle, debug, kwargs),
                                            name="exporter-export", daemon=True)
            self._process.start()
            send.close()

    def __enter__(self) -> "SecondProcess":
        return self

    def __exit__(self, *exc) -> None:
        if self._process is not None:
            if self._process.is_alive():
                self._process.kill()
            self._process.join()

    def finish(self, stage: Stages) -> dict[str, Optional[dict]]:
        """Wait for the process; its graphs' facts by file. Prints and records its export as a stage, with the time
        it took there (alongside this process's stages since it started)."""
        if self._process is None:
            return {}
        files = ", ".join(g.file for g in self.graphs)
        with stage(f"wait for the second process exporting {files}"):
            kind, value = self._answer()
        if kind == "error":
            raise ExporterError(*value)
        if kind == "exception":
            raise value
        made, seconds = value
        stage.record(f"export {files} (second process, alongside)", seconds)
        for g, (debug_path, _) in zip(self.graphs, made):
            g.debug = debug_path
        return {g.file: facts for g, (_, facts) in zip(self.graphs, made)}

    def _answer(self) -> tuple:
        try:
            return self._receive.recv()
        except EOFError:
            self._process.join()
            raise ExporterError(f"The process exporting the fp16 graphs ended (exit status {self._process.exitcode}) "
                                "before it finished.",
                                "Run the build again; if it repeats, the machine likely ran out of memory.") from None


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _child(send, parent: int, spec: BuildSpec, graphs: list[Graph], bundle: Path, debug: Path, kwargs: dict) -> None:
    end_with_parent(parent)
    start = time.perf_counter()
    try:
        _, model = prepare(spec)
        made = []
        for g in graphs:
            facts = export_here(model, g, bundle, debug, kwargs)
            made.append((g.debug, facts))
        send.send(("done", (made, round(time.perf_counter() - start, 3))))
    except ExporterError as e:
        send.send(("error", (e.problem, e.fix)))
    except Exception as e:  # noqa: BLE001 - handed to the parent, which raises it
        try:
            send.send(("exception", e))
        except Exception:  # noqa: BLE001 - an exception that does not pickle goes as its text
            send.send(("exception", RuntimeError(f"{type(e).__name__}: {e}")))
