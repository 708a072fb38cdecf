# SPDX-License-Identifier: Apache-2.0
"""torch → ONNX with the dynamo exporter: static token shapes, optionally a dynamic batch axis.

Weights go to `<name>.data` beside the graph (what trtexec and Polygraphy expect). Exporting the
same module twice gives byte-identical files.
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path
from typing import Optional, Sequence

import onnx
import onnx_graphsurgeon as gs
import onnx_ir as ir
import torch

from .. import ops
from ..ops.plugin_nodes import translation_table
from .optimize import optimize

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
BATCH_DIM = "batch"


def export_onnx(
    module: torch.nn.Module,
    path: Path | str,
    img_size: int | Sequence[int],
    batch: tuple[int, int, int] = (1, 1, 1),
    opset: int = 18,
    output_names: Optional[Sequence[str]] = None,
    in_chans: int = 3,
    dtype: torch.dtype = torch.float32,
    lowering: str = "decompose",
) -> Path:
    """Export `module` to `path` (+ `path.data`); returns `path`.

    `batch` is (min, opt, max). When min == max the batch is a fixed dimension; otherwise it is
    the symbolic dimension `batch`, and every other dimension stays static. `lowering` is how token
    ops are written: `decompose` (standard ops) or `plugin` (one TensorRT plugin node each).
    """
    path = Path(path)
    h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    lo, opt, hi = batch
    dynamic = lo != hi
    # A batch of 1 would let torch.export specialise the axis away; trace with >= 2 when dynamic.
    trace_batch = max(2, opt) if dynamic else lo
    dummy = torch.zeros(trace_batch, in_chans, h, w, dtype=dtype)
    dynamic_shapes = None
    if dynamic:
        dynamic_shapes = ({0: torch.export.Dim(BATCH_DIM, min=lo, max=hi)},)
    names = list(output_names) if output_names else [OUTPUT_NAME]
    module = module.eval()
    table = translation_table() if lowering == "plugin" else None
    with torch.no_grad(), _quiet(), ops.lowering(lowering):
        program = torch.onnx.export(
            module,
            (dummy,),
            dynamo=True,
            custom_translation_table=table,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=names,
            dynamic_shapes=dynamic_shapes,
            optimize=False,  # optimize.optimize: the same passes, found faster
            verbose=False,
        )
    optimize(program.model)
    if dynamic:
        _rename_batch_dim(program.model)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_name(path.name + ".data").unlink(missing_ok=True)
    program.save(str(path), external_data=True)
    return path


def _rename_batch_dim(model) -> None:
    """torch.export names the symbol after its own counter (s0, s77...); call it `batch`."""
    for value in [*model.graph.inputs, *model.graph.outputs]:
        if value.shape is not None and value.shape.rank() and not isinstance(value.shape[0], int):
            value.shape = onnx_ir_shape(value.shape)


def onnx_ir_shape(shape):
    dims = list(shape)
    dims[0] = ir.SymbolicDim(BATCH_DIM)
    return ir.Shape(dims)


@contextlib.contextmanager
def _quiet():
    """Hide what the dynamo exporter itself reports (its `torch.onnx` logger below ERROR, warnings issued
    from `torch.onnx.*` modules); our progress display replaces them. Everything else passes: the model's
    own prints and warnings, and anything other threads write."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"torch\.onnx(\.|$)")
        logger = logging.getLogger("torch.onnx")
        level = logger.level
        logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            logger.setLevel(level)


def keep_outputs(src: Path, dst: Path, names: Sequence[str]) -> Path:
    """Copy graph `src` to `dst` with only the outputs `names` (and the nodes they need).

    The deliverable graph of a token-reduction model is cut from its debug export (which also
    outputs the kept-token indices), so both come from one trace and compute identical logits.
    """
    graph = gs.import_onnx(onnx.load(str(src)))
    graph.outputs = [t for t in graph.outputs if t.name in names]
    graph.cleanup()
    save(gs.export_onnx(graph), dst)
    return dst


def save(model: onnx.ModelProto, dst: Path) -> None:
    """Save with every weight in `<dst>.data`, as torch.onnx does."""
    data = dst.with_name(dst.name + ".data")
    data.unlink(missing_ok=True)
    onnx.save(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name, size_threshold=1024)
