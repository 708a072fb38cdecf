# SPDX-License-Identifier: Apache-2.0
"""Constant folding of a written graph: subgraphs that depend on no input are computed once, at build time.

torch.export leaves a few constant subgraphs (shape arithmetic, casts and reshapes of initializers) that
every runtime folds again when it loads the graph; Polygraphy's `surgeon sanitize --fold-constants`
removes them. onnx-graphsurgeon evaluates them with onnxruntime on the CPU, deterministically, so a
build stays byte-identical. A folded constant larger than SIZE_LIMIT bytes is left unfolded, so folding
never inflates the weights (e.g. by materialising a broadcast).
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import onnx
import onnx_graphsurgeon as gs

from .onnx_export import save

SIZE_LIMIT = 1 << 20


def fold_constants(path: Path) -> int:
    """Fold the constant subgraphs of `path` (weights in `path.data`) in place; returns the nodes removed."""
    graph = gs.import_onnx(onnx.load(str(path)))
    before = len(graph.nodes)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        graph.fold_constants(size_threshold=SIZE_LIMIT).cleanup()
    removed = before - len(graph.nodes)
    if removed:
        save(gs.export_onnx(graph), path)
    return removed
