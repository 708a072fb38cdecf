# SPDX-License-Identifier: Apache-2.0
"""The fp16 graph: exported from the model in half precision, with fp32 islands where PyTorch asks.

TensorRT 11 has no fp16 builder flag: precision lives in the graph, built strongly typed.
We export the half-precision PyTorch model rather than running an fp32→fp16 ONNX converter over
model.onnx, because in the fp32 graph the score code's `.float()` casts are no-ops the exporter
removes, so no converter can see that token scores must stay fp32. Exported from half precision,
those casts are real Cast nodes and the graph computes exactly what PyTorch's half model does:
- token scores (everything feeding a TopK/ArgMax) are fp32, so fp16 does not change which tokens
  are kept; `unguarded_selectors` checks that on the exported graph;
- LayerNormalization runs with fp32 statistics (ONNX `stash_type` = 1, the exporter's default);
- graph inputs/outputs stay fp32 unless `io_fp16` (a Cast at each end).
"""
from __future__ import annotations

import copy
from pathlib import Path

import onnx
import torch
from onnx import TensorProto

from .onnx_export import export_onnx

SELECTORS = ("TopK", "ArgMax", "ArgMin")


class Half(torch.nn.Module):
    """`module` in fp16 behind fp32 (or fp16) inputs and outputs."""

    def __init__(self, module: torch.nn.Module, io_fp16: bool):
        super().__init__()
        self.module = copy.deepcopy(module).half().eval()
        self.io_fp16 = io_fp16

    def forward(self, x: torch.Tensor):
        out = self.module(x.half())
        if self.io_fp16:
            return out
        if isinstance(out, tuple):
            return tuple(o.float() if o.is_floating_point() else o for o in out)
        return out.float()


def export_fp16(module: torch.nn.Module, path: Path, io_fp16: bool = False, **export_kwargs) -> dict:
    """Export the fp16 graph to `path` (+ `path.data`); returns facts for the manifest."""
    dtype = torch.float16 if io_fp16 else torch.float32
    export_onnx(Half(module, io_fp16), path, dtype=dtype, **export_kwargs)
    model = onnx.load(str(path), load_external_data=False)
    return {
        "method": "half-precision export of the PyTorch model (fp32 token scores and LayerNorm statistics)",
        "io_dtype": "float16" if io_fp16 else "float32",
        "unguarded_selectors": unguarded_selectors(model),
    }


def unguarded_selectors(model: onnx.ModelProto) -> list[str]:
    """TopK/ArgMax nodes whose data input is not float32/int: token choices made in fp16."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *inferred.graph.input]}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    return [
        node.name
        for node in model.graph.node
        if node.op_type in SELECTORS and types.get(node.input[0]) in (TensorProto.FLOAT16, TensorProto.BFLOAT16)
    ]
