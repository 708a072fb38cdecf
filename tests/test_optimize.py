# SPDX-License-Identifier: Apache-2.0
"""`export.optimize` is torch.onnx.export's optimizer (onnxscript's `optimize_ir`, then its ONNX fusions) found
faster: on any graph it must make exactly what onnxscript makes."""
import numpy as np
import onnx
import onnx_ir as ir
import pytest
import timm
import torch
from onnx import TensorProto, helper, numpy_helper
from onnxscript.optimizer import optimize_ir
from onnxscript.rewriter.onnx_fusions import fuse

from exporter.export.optimize import optimize
from exporter.methods import apply_method
from exporter.methods.base import Traced


def _both(proto: onnx.ModelProto) -> tuple[bytes, bytes]:
    """`proto` optimized by onnxscript as torch calls it, and by `optimize`; serialized."""
    theirs, ours = ir.serde.deserialize_model(proto), ir.serde.deserialize_model(proto)
    optimize_ir(theirs)
    fuse(theirs)
    optimize(ours)
    return ir.serde.serialize_model(theirs).SerializeToString(), ir.serde.serialize_model(ours).SerializeToString()


def test_slices_become_a_split_as_onnxscript_makes_them():
    """The guarded rule still fires: two Slices halving one tensor's last axis become one Split; a pair that does
    not halve it, and a lone Slice, stay."""
    def ints(name, *values):
        return numpy_helper.from_array(np.array(values, dtype=np.int64), name)

    consts = [ints("zero", 0), ints("four", 4), ints("eight", 8), ints("three", 3), ints("last", -1)]
    # onnxscript 0.7 pairs a Slice with the first Slice of the same tensor in graph order (itself included) and
    # only then checks the halves: it makes a Split where the upper half comes first
    nodes = [
        helper.make_node("Slice", ["x", "four", "eight", "last"], ["b"]),
        helper.make_node("Slice", ["x", "zero", "four", "last"], ["a"]),
        helper.make_node("Slice", ["y", "three", "eight", "last"], ["d"]),
        helper.make_node("Slice", ["y", "zero", "three", "last"], ["c"]),
        helper.make_node("Slice", ["x", "three", "eight", "last"], ["e"]),
        helper.make_node("Concat", ["a", "b", "c", "d", "e"], ["out"], axis=-1),
    ]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 8]) for n in "xy"]
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 21])]
    graph = helper.make_graph(nodes, "slices", inputs, outputs, consts)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    theirs, ours = _both(proto)
    assert ours == theirs
    ops = [n.op_type for n in onnx.load_from_string(ours).graph.node]
    assert sorted(ops) == ["Concat", "Slice", "Slice", "Slice", "Split"]


@pytest.mark.parametrize("method, params", [
    ("tome", dict(r=8)),
    ("diffrate", dict(prune_kept=[40, 35, 30, 28, 26, 24], merge_kept=[38, 33, 29, 27, 25, 22])),
])
def test_an_exported_graph_comes_out_as_onnxscript_makes_it(method, params):
    """A token-reduction model's debug graph, exported unoptimized with a dynamic batch as `export_onnx` does."""
    torch.manual_seed(0)
    model = Traced(apply_method(timm.create_model("test_vit").eval(), method, **params)).eval()
    with torch.no_grad():
        program = torch.onnx.export(model, (torch.zeros(2, 3, 160, 160),), dynamo=True, optimize=False,
                                    dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4)},))
    theirs, ours = _both(ir.serde.serialize_model(program.model))
    assert ours == theirs
