# SPDX-License-Identifier: Apache-2.0
"""Exporting a bundle's graphs (which graphs a spec writes is `bundle.planned`).

A token-reduction model is exported once per precision *with its kept-token indices as extra
outputs* (the debug graph, which verification uses to tell near-tie flips from bugs), and for an
fp16 graph in standard ops every token choice's fp32 scores after them (the graph's own rounding
at each choice); the deliverable is that graph with only the logits output kept. One trace, so
both compute the same. Debug graphs never enter the bundle.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from ..bundle import Graph
from ..methods.base import Traced
from ..spec import QUANTIZED
from .fp16 import export_fp16
from .onnx_export import OUTPUT_NAME, export_onnx, keep_outputs


def export_graph(model: torch.nn.Module, graph: Graph, bundle: Path, debug_dir: Path, write_deliverable: bool = True, **kwargs) -> Optional[dict]:
    """Write `graph` into `bundle` (and its debug twin into `debug_dir`); returns fp16 facts or None. An 8-bit graph
    is not exported: `quantize` makes it from the fp32 one (and verification judges it on data)."""
    if graph.precision in QUANTIZED:
        return None
    fp16 = graph.precision == "fp16"
    kwargs = {**kwargs, "lowering": graph.lowering}

    def export(module, path, **extra):
        if fp16:
            return export_fp16(module, path, io_fp16=graph.io_fp16, **kwargs, **extra)
        export_onnx(module, path, **kwargs, **extra)
        return None

    made: list = []
    with torch.no_grad():
        count = len(model.forward_traced(torch.zeros(1, 3, *kwargs["img_size"]), None, made)) - 1
    if count == 0:  # no token choices to compare: the graph is its own debug twin
        return export(model, bundle / graph.file) if write_deliverable else None
    graph.debug = debug_dir / graph.file
    # an fp16 graph's choices' scores too, to measure its own rounding at a flip (a plugin node cannot output
    # them: the reference running it in onnxruntime hands them over instead, runtime.op_reference.scores)
    scores = len(made) if fp16 and graph.lowering == "decompose" else 0
    names = [OUTPUT_NAME] + [f"kept{i}" for i in range(count)] + [f"score{i}" for i in range(scores)]
    facts = export(Traced(model, scores=bool(scores)), graph.debug, output_names=names)
    if write_deliverable:
        keep_outputs(graph.debug, bundle / graph.file, [OUTPUT_NAME])
    return facts
