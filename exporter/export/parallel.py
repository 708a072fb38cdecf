# SPDX-License-Identifier: Apache-2.0
"""Exporting a bundle's fp32 graphs in a second process while this one exports the fp16 graphs and goes on.

Each export is a dynamo trace of the whole model plus the onnxscript optimizer: about 20 s of single-threaded
Python for DeiT-S, and a build exports the model twice (fp32 and fp16, see `export/fp16.py`) or four times (with
the plugin graphs). On a machine with two or more cores, a second process (`python -m exporter.export.parallel`)
loads the very model this build made and exports the fp32 graphs, while this process exports the fp16 ones and
does the build's next stages until it needs them. The second process takes the fp32 graphs because it starts
about 8 s behind (its launch and imports) and they are the quicker exports (DeiT-S ToMe: 20 s against 24 s, the
fp16 debug graph also outputting every choice's scores). A build with an 8-bit graph quantizes it here from the
fp32 graph and has no fp16 graph: it exports in this process alone. Each process writes its own files, so the bundle is what one process would have written
(tests/test_build.py compares). A plain child process, not multiprocessing's spawn: spawn would run the caller's
main script again in the child, which a script calling the CLI without a `__main__` guard cannot survive.

The request and the answer cross as pickles in the build's own private debug folder (both written by this
package, never by a bundle).
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from ..bundle import Graph
from ..errors import ExporterError
from ..interrupt import end_with_parent, leave
from ..spec import QUANTIZED
from ..stages.progress import Stages
from .fold import fold_constants
from .graphs import export_graph

_MODEL, _REQUEST = "second-process.model.pt", "second-process.request.pkl"
_ANSWER, _LOG = "second-process.answer.pkl", "second-process.log"


def export_here(model: torch.nn.Module, g: Graph, bundle: Path, debug: Path, kwargs: dict) -> Optional[dict]:
    """Export `g` into `bundle` (its debug twin into `debug`) and fold its constants; the fp16 graph's facts."""
    facts = export_graph(model, g, bundle, debug, **kwargs)
    fold_constants(bundle / g.file)
    return facts


class SecondProcess:
    """The fp32 graphs of `graphs`, exported by a second process (none where one core, one graph or an 8-bit graph
    makes it pointless or impossible: `graphs` is then empty and `finish` returns nothing). Use as a context manager: leaving it early
    (an error, Ctrl-C) kills the process."""

    def __init__(self, model: torch.nn.Module, graphs: list[Graph], bundle: Path, debug: Path, kwargs: dict):
        exported = [g for g in graphs if g.precision not in QUANTIZED]
        alone = len(exported) < 2 or _cores() < 2 or len(exported) < len(graphs)  # an 8-bit graph needs the fp32 here
        self.graphs = [] if alone else [g for g in exported if g.precision == "fp32"]
        self._debug = debug
        self._process: Optional[subprocess.Popen] = None
        if self.graphs and not _saved(model, debug / _MODEL):
            self.graphs = []
        if self.graphs:
            (debug / _REQUEST).write_bytes(pickle.dumps((self.graphs, bundle, debug, kwargs)))
            package_root = str(Path(__file__).resolve().parents[2])  # this checkout's exporter, not another install
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}
            self._launched = time.time()  # the child's whole time, its start-up included, ends at its answer's mtime
            with open(debug / _LOG, "wb") as log:
                self._process = subprocess.Popen([sys.executable, "-m", __name__, str(debug), str(os.getpid())],
                                                 stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)

    def __enter__(self) -> "SecondProcess":
        return self

    def __exit__(self, *exc) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()

    def finish(self, stage: Stages) -> dict[str, Optional[dict]]:
        """Wait for the process; its graphs' facts by file (None for fp32 graphs). Its export is printed and recorded
        as a stage with the time it took there (alongside this process's stages since it started)."""
        if self._process is None:
            return {}
        files = ", ".join(g.file for g in self.graphs)
        with stage(f"wait for the second process exporting {files}"):
            returncode = self._process.wait()
        answer = self._debug / _ANSWER
        if not answer.is_file():
            said = (self._debug / _LOG).read_text(errors="replace").strip().splitlines()
            raise ExporterError(f"The process exporting {files} ended (exit status {returncode}) before it finished"
                                + (f"; its last message: {said[-1]!r}" if said else "") + ".",
                                "Run the build again with --debug; if it repeats, the machine likely ran out of memory.")
        made = pickle.loads(answer.read_bytes())
        stage.record(f"export {files} (second process, alongside)", answer.stat().st_mtime - self._launched)
        for g, (debug_path, _) in zip(self.graphs, made):
            g.debug = debug_path
        return {g.file: facts for g, (_, facts) in zip(self.graphs, made)}


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _saved(model: torch.nn.Module, path: Path) -> bool:
    """Whether `model` pickled to `path` (a module holding a lambda or a local class does not)."""
    try:
        torch.save(model, path)
    except (pickle.PicklingError, AttributeError, TypeError):
        path.unlink(missing_ok=True)
        return False
    return True


def _main(debug: Path, parent: int) -> int:
    """The second process: export the requested graphs and leave [(debug twin, facts)] per graph as the answer; an
    error ends it with its traceback in the log, which the build reports."""
    end_with_parent(parent)
    graphs, bundle, debug, kwargs = pickle.loads((debug / _REQUEST).read_bytes())
    model = torch.load(debug / _MODEL, weights_only=False)  # written by the build itself, above
    facts = [export_here(model, g, bundle, debug, kwargs) for g in graphs]
    (debug / _ANSWER).write_bytes(pickle.dumps([(g.debug, f) for g, f in zip(graphs, facts)]))
    return 0


if __name__ == "__main__":
    leave(_main(Path(sys.argv[1]), int(sys.argv[2])))
