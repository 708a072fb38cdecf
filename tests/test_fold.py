# SPDX-License-Identifier: Apache-2.0
"""Constant subgraphs are folded before a graph is written (issue 13 §7): what Polygraphy's
`surgeon sanitize --fold-constants` would remove (36 Slice/Concat nodes of DeiT-S ToMe fp16) is gone,
the graph computes the same, and folding is deterministic (builds stay byte-identical)."""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from exporter import bundle as artifacts
from exporter.export.fold import fold_constants
from exporter.export.onnx_export import save
from exporter.runtime import ort as ort_runtime


def graph_with_constant_subgraph(path):
    """y = reshape(x, concat(slice(const), [32])) @ w, i.e. x as [batch, 32]: Slice and Concat depend on no input."""
    shape = numpy_helper.from_array(np.array([0, 99, 7], dtype=np.int64), "shape")
    tail = numpy_helper.from_array(np.array([32], dtype=np.int64), "tail")
    starts, ends = (numpy_helper.from_array(np.array([v], dtype=np.int64), n) for v, n in ((0, "starts"), (1, "ends")))
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((32, 16)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Slice", ["shape", "starts", "ends"], ["head"]),
        helper.make_node("Concat", ["head", "tail"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16])], [shape, tail, starts, ends, w],
    )
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), path)


def test_constant_subgraphs_are_folded(tmp_path):
    a, b = tmp_path / "a" / "model.onnx", tmp_path / "b" / "model.onnx"
    for p in (a, b):
        p.parent.mkdir()
        graph_with_constant_subgraph(p)
    x = np.random.default_rng(1).standard_normal((3, 4, 8)).astype(np.float32)
    before = ort_runtime.run(ort_runtime.session(a), x)[0]
    assert fold_constants(a) == 2 and fold_constants(b) == 2
    ops = [n.op_type for n in onnx.load(str(a), load_external_data=False).graph.node]
    assert ops == ["Reshape", "MatMul"]
    np.testing.assert_array_equal(ort_runtime.run(ort_runtime.session(a), x)[0], before)
    for name in ("model.onnx", "model.onnx.data"):
        assert artifacts.sha256(a.parent / name) == artifacts.sha256(b.parent / name)
    assert fold_constants(a) == 0  # nothing left to fold
