# SPDX-License-Identifier: Apache-2.0
"""Graph lint: each TensorRT 10.3 violation on a hand-built graph, static-shape checks, and a clean DeiT export."""
import numpy as np
import onnx
import pytest
import timm
import torch
from onnx import TensorProto, helper, numpy_helper

from exporter.checks import graph as lint
from exporter.export.onnx_export import export_onnx

F = TensorProto.FLOAT


def model(nodes, inputs, outputs, inits=(), opset=18, value_info=(), extra_opsets=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits), value_info=list(value_info))
    opsets = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, 1) for d in extra_opsets)]
    return helper.make_model(graph, opset_imports=opsets)


def vi(name, shape, dtype=F):
    return helper.make_tensor_value_info(name, dtype, shape)


def ints(name, values):
    return numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def topk_model(k_source="init", k=5, **attrs):
    """x[batch, 16] -> TopK; K from an initializer, a Constant node, or a graph input."""
    nodes = [helper.make_node("TopK", ["x", "k"], ["values", "indices"], name="select", **attrs)]
    inputs, inits = [vi("x", ["batch", 16])], []
    if k_source == "init":
        inits = [ints("k", [k])]
    elif k_source == "constant":
        nodes.insert(0, helper.make_node("Constant", [], ["k"], value=ints("kv", [k])))
    else:
        inputs.append(vi("k", [1], TensorProto.INT64))
    return model(nodes, inputs, [vi("values", None), vi("indices", None, TensorProto.INT64)], inits)


def only(problems, *needles):
    """The single problem, which must mention every needle."""
    assert len(problems) == 1, problems
    for needle in needles:
        assert needle in problems[0], problems[0]
    return problems[0]


# ------------------------------------------------------------------------------------------------ TensorRT checks


def test_topk_with_constant_k_is_clean():
    assert lint.check_tensorrt(topk_model("init", 5)) == []
    assert lint.check_tensorrt(topk_model("constant", 5)) == []


def test_topk_with_runtime_k():
    only(lint.check_tensorrt(topk_model("input")), "TopK node 'select'", "K comes from tensor 'k'", "not a constant")


def test_topk_unsorted():
    only(lint.check_tensorrt(topk_model(sorted=0)), "TopK node 'select'", "sorted=0")


@pytest.mark.parametrize("source", ["init", "constant"])
def test_topk_k_at_limit(source):
    only(lint.check_tensorrt(topk_model(source, 4000)), "K=4000", "3840")
    assert lint.check_tensorrt(topk_model(source, 3839)) == []


def scatter_model(op, **attrs):
    index = vi("idx", [2, 1], TensorProto.INT64) if op == "ScatterND" else vi("idx", [2, 4], TensorProto.INT64)
    updates = vi("upd", [2, 8]) if op == "ScatterND" else vi("upd", [2, 4])
    node = helper.make_node(op, ["data", "idx", "upd"], ["out"], name="write", **attrs)
    return model([node], [vi("data", [4, 8]), index, updates], [vi("out", [4, 8])])


def test_scatter_elements_reduction():
    only(lint.check_tensorrt(scatter_model("ScatterElements", reduction="add")),
         "ScatterElements node 'write'", "reduction='add'", "scatter_add_tokens")
    assert lint.check_tensorrt(scatter_model("ScatterElements", reduction="none")) == []
    assert lint.check_tensorrt(scatter_model("ScatterElements")) == []


def test_scatter_nd_reduction():
    only(lint.check_tensorrt(scatter_model("ScatterND", reduction="mul")), "ScatterND node 'write'", "reduction='mul'")
    # TensorRT 10.x's importer rejects the attribute itself, which the dynamo exporter writes as 'none'.
    only(lint.check_tensorrt(scatter_model("ScatterND", reduction="none")), "even 'none'", "drop the attribute")
    assert lint.check_tensorrt(scatter_model("ScatterND")) == []


def nonzero_model():
    nodes = [helper.make_node("NonZero", ["x"], ["nz"], name="find"),
             helper.make_node("Transpose", ["nz"], ["nzt"], name="flip", perm=[1, 0]),
             helper.make_node("Cast", ["nzt"], ["out"], name="to_float", to=F)]
    return model(nodes, [vi("x", ["batch", 16])], [vi("out", None)])


def test_nonzero_is_data_dependent():
    only(lint.check_tensorrt(nonzero_model()), "NonZero node 'find'", "depends on tensor values")


def test_unique_is_data_dependent_and_unsupported():
    node = helper.make_node("Unique", ["x"], ["y"], name="dedupe")
    only(lint.check_tensorrt(model([node], [vi("x", [16])], [vi("y", None)])),
         "Unique node 'dedupe'", "depends on tensor values", "no importer")


def test_negative_transpose_perm():
    node = helper.make_node("Transpose", ["x"], ["y"], name="swap", perm=[0, -1, 1])
    only(lint.check_tensorrt(model([node], [vi("x", [2, 3, 4])], [vi("y", [2, 4, 3])])),
         "Transpose node 'swap'", "[0, -1, 1]", "negative")


@pytest.mark.parametrize("op", ["Det", "BitwiseAnd", "StringNormalizer", "Col2Im"])
def test_ops_missing_from_trt_10_3(op):
    node = helper.make_node(op, ["x"], ["y"], name="odd")
    only(lint.check_tensorrt(model([node], [vi("x", [4, 4])], [vi("y", None)])),
         f"{op} node 'odd'", "not supported by TensorRT 10.3")


def test_supported_op_table_matches_the_parser_doc():
    # Spot checks against onnx-tensorrt docs/operators.md (10.x): Y rows in, N rows out.
    assert {"TopK", "GatherElements", "LayerNormalization", "Einsum", "Gelu", "ScatterND"} <= lint.TRT_10_3_OPS
    assert not {"Unique", "Compress", "Det", "StringNormalizer", "Attention", "RMSNormalization"} & lint.TRT_10_3_OPS


def test_axes_must_be_constant():
    nodes = [helper.make_node("Squeeze", ["x", "axes"], ["y"], name="squeeze")]
    graph = model(nodes, [vi("x", [4, 1]), vi("axes", [1], TensorProto.INT64)], [vi("y", [4])])
    only(lint.check_tensorrt(graph), "Squeeze node 'squeeze'", "'axes'", "must be a constant")
    graph = model(nodes, [vi("x", [4, 1])], [vi("y", [4])], [ints("axes", [1])])
    assert lint.check_tensorrt(graph) == []


def test_layer_norm_extra_outputs():
    node = helper.make_node("LayerNormalization", ["x", "w"], ["y", "mean", "inv_std"], name="ln")
    graph = model([node], [vi("x", [2, 8])], [vi("y", [2, 8])], [numpy_helper.from_array(np.ones(8, np.float32), "w")])
    only(lint.check_tensorrt(graph), "LayerNormalization node 'ln'", "only the first output")


def test_resize_modes():
    def resize(**attrs):
        node = helper.make_node("Resize", ["x", "", "scales"], ["y"], name="up", **attrs)
        scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
        return lint.check_tensorrt(model([node], [vi("x", [1, 3, 4, 4])], [vi("y", [1, 3, 8, 8])], [scales]))

    assert resize(mode="linear") == []
    only(resize(mode="cubic"), "Resize node 'up'", "mode='cubic'")
    only(resize(mode="linear", coordinate_transformation_mode="tf_crop_and_resize"), "tf_crop_and_resize")
    only(resize(mode="linear", antialias=1), "antialias")


def test_opset_beyond_trt_10_3():
    graph = model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [2])], [vi("y", [2])], opset=23)
    only(lint.check_tensorrt(graph), "opset 23", "9 to 20")


def test_subgraphs_are_checked():
    branch = helper.make_graph([helper.make_node("TopK", ["x", "k"], ["v", "i"], name="inner", sorted=0)], "then",
                               [], [vi("v", None)], initializer=[ints("k", [2])])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["w"])], "else", [], [vi("w", None)])
    node = helper.make_node("If", ["cond"], ["out"], name="branch", then_branch=branch, else_branch=other)
    graph = model([node], [vi("cond", [], TensorProto.BOOL), vi("x", [8])], [vi("out", None)])
    only(lint.check_tensorrt(graph), "in If 'branch'.then_branch", "TopK node 'inner'", "sorted=0")


def test_local_functions_are_checked_and_inlined():
    body = [helper.make_node("Constant", [], ["k"], value=ints("kv", [2])),
            helper.make_node("TopK", ["x", "k"], ["v", "i"], name="inner", sorted=0)]
    function = helper.make_function("local", "Select", ["x"], ["v"], body, [helper.make_opsetid("", 18)])
    graph = model([helper.make_node("Select", ["x"], ["y"], name="select", domain="local")],
                  [vi("x", ["batch", 8])], [vi("y", None)], extra_opsets=["local"])
    graph.functions.append(function)
    only(lint.check_tensorrt(graph), "in function 'Select'", "TopK node 'inner'", "sorted=0")
    assert lint.check_static(graph) == []


def tome_node(**attrs):
    attrs = {"r": 3, "plugin_version": "1", "plugin_namespace": "exporter", **attrs}
    return helper.make_node("ToMeMerge", ["x", "size", "metric"], ["y", "s", "src", "dst"], name="merge",
                            domain="exporter", **{k: v for k, v in attrs.items() if v is not None})


def tome_graph(node, y_tokens=8):
    inputs = [vi("x", ["batch", 11, 4]), vi("size", ["batch", 11]), vi("metric", ["batch", 11, 2])]
    outputs = [vi("y", ["batch", y_tokens, 4]), vi("s", ["batch", 8]), vi("src", ["batch", 3], TensorProto.INT64),
               vi("dst", ["batch", 3], TensorProto.INT64)]
    return model([node], inputs, outputs, extra_opsets=["exporter"])


def test_plugin_nodes_are_held_to_their_contract():
    assert lint.check_tensorrt(tome_graph(tome_node())) == []
    assert lint.check_static(tome_graph(tome_node())) == []
    only(lint.check_tensorrt(tome_graph(tome_node(plugin_version="2"))), "plugin_version is '2'", "says '1'")
    only(lint.check_tensorrt(tome_graph(tome_node(r=None))), "attribute 'r' is missing")
    only(lint.check_tensorrt(tome_graph(tome_node(k=2))), "['k'] are not in its contract")
    unknown = helper.make_node("FuseTokens", ["x"], ["y"], name="fuse", domain="tokred")
    graph = model([unknown], [vi("x", ["batch", 8])], [vi("y", ["batch", 4])], extra_opsets=["tokred"])
    only(lint.check_tensorrt(graph), "FuseTokens node 'fuse'", "no plugin of this name has a contract")


def test_plugin_output_shapes_come_from_the_contract():
    """A graph that declares other token counts than the plugin computes (N - r = 8) is caught."""
    problems = lint.check_static(tome_graph(tome_node(), y_tokens=9))
    assert any("declared [batch, 9, 4], its contract gives [batch, 8, 4]" in p for p in problems), problems


def test_onnxruntime_contrib_ops_are_not_plugins():
    node = helper.make_node("FusedMatMul", ["x", "x"], ["y"], name="fused", domain="com.microsoft")
    graph = model([node], [vi("x", [2, 2])], [vi("y", [2, 2])], extra_opsets=["com.microsoft"])
    only(lint.check_tensorrt(graph), "FusedMatMul node 'fused'", "not a TensorRT plugin")


def test_deformconv_needs_a_plugin():
    """DeformConv is imported as TensorRT's ModulatedDeformConv2d plugin: no graph of ours may rely on it."""
    node = helper.make_node("DeformConv", ["x", "w", "offset"], ["y"], name="dcn", kernel_shape=[2, 2], strides=[2, 2])
    graph = model([node], [vi("x", [1, 4, 8, 8]), vi("w", [8, 4, 2, 2]), vi("offset", [1, 8, 4, 4])],
                  [vi("y", [1, 8, 4, 4])], opset=19)
    only(lint.check_tensorrt(graph), "DeformConv", "not supported by TensorRT 10.3's ONNX parser")


# ------------------------------------------------------------------------------------------------- static shapes


def reshape_model(shape_from_data=False):
    """conv-like flatten of x[batch, 4, 2, 2] with a -1 batch: plain ONNX inference loses the batch here."""
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["flat"], name="flatten"),
             helper.make_node("Relu", ["flat"], ["y"], name="act")]
    inits = [ints("shape", [-1, 4, 4])]
    inputs = [vi("x", ["batch", 4, 2, 2])]
    if shape_from_data:
        nodes.insert(0, helper.make_node("Cast", ["data"], ["shape"], name="shape_of_data", to=TensorProto.INT64))
        inputs.append(vi("data", [3]))
        inits = []
    return model(nodes, inputs, [vi("y", None)], inits)


def test_reshape_with_minus_one_keeps_the_batch():
    assert lint.check_static(reshape_model()) == []


def test_external_shape_tensors_are_read_from_beside_the_graph(tmp_path):
    path = tmp_path / "ext.onnx"
    onnx.save(reshape_model(), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.onnx.data", size_threshold=0)
    assert lint.check_static(path) == []
    # Without the folder the target shape is unknown, and the lint says so rather than guessing.
    unloaded = onnx.load(str(path), load_external_data=False)
    only(lint.check_static(unloaded), "Reshape node 'flatten'")


def test_reshape_fed_by_data_is_flagged():
    problem = only(lint.check_static(reshape_model(shape_from_data=True)), "tensor 'flat'", "Reshape node 'flatten'")
    assert "1 tensor(s) downstream" in problem


def test_nonzero_shape_is_flagged_at_its_source():
    only(lint.check_static(nonzero_model()), "tensor 'nz' from NonZero node 'find'", "dim 1", "2 tensor(s) downstream")


def test_symbolic_input_dims_other_than_batch():
    graph = model([helper.make_node("Relu", ["x"], ["y"], name="act")], [vi("x", ["batch", "tokens", 8])],
                  [vi("y", None)])
    only(lint.check_static(graph), "graph input 'x'", "[batch, tokens, 8]", "1 tensor(s) downstream")


def test_batch_may_move_and_combine():
    # [batch, 6] -> [3, batch, 2] -> [3*batch, 2]: still determined by the batch alone.
    nodes = [helper.make_node("Reshape", ["x", "s1"], ["a"], name="split"),
             helper.make_node("Transpose", ["a"], ["b"], name="move", perm=[2, 0, 1]),
             helper.make_node("Reshape", ["b", "s2"], ["y"], name="merge")]
    graph = model(nodes, [vi("x", ["batch", 6])], [vi("y", None)], [ints("s1", [0, 2, 3]), ints("s2", [-1, 2])])
    assert lint.check_static(graph) == []


def plugin_model(declare: bool):
    nodes = [helper.make_node("FuseTokens", ["x"], ["fused"], name="fuse", domain="tokred"),
             helper.make_node("Relu", ["fused"], ["y"], name="act")]
    declared = [vi("fused", ["batch", 4])] if declare else []
    return model(nodes, [vi("x", ["batch", 8])], [vi("y", None)], value_info=declared, extra_opsets=["tokred"])


def test_plugin_output_shapes_come_from_value_info():
    assert lint.check_static(plugin_model(declare=True)) == []
    only(lint.check_static(plugin_model(declare=False)), "FuseTokens node 'fuse'", "declare the plugin's output")


# -------------------------------------------------------------------------------------------------- real exports


@pytest.fixture(scope="module")
def deit_tiny(tmp_path_factory):
    net = timm.create_model("deit_tiny_patch16_224", pretrained=False, exportable=True)
    return export_onnx(net, tmp_path_factory.mktemp("deit") / "model.onnx", 224, batch=(1, 2, 8))


def test_dense_deit_tiny_is_clean(deit_tiny):
    assert lint.lint(deit_tiny) == []
    loaded = onnx.load(str(deit_tiny))  # a ModelProto with its weights in memory gives the same answer
    assert lint.lint(loaded) == []


class BooleanMask(torch.nn.Module):
    """x[x > 0]: the token count depends on the values."""

    def forward(self, x):
        return x[x > 0].sum(0, keepdim=True) + x.flatten(1).mean(1)


def test_exported_boolean_mask_is_flagged(tmp_path):
    path = export_onnx(BooleanMask(), tmp_path / "mask.onnx", 8, batch=(2, 2, 2))
    problems = lint.lint(path)
    assert any(p.startswith("tensor ") and "NonZero node" in p for p in problems), problems
    assert any(p.startswith("NonZero node") and "depends on tensor values" in p for p in problems), problems


@pytest.mark.parametrize("op", ["ReduceL2", "ReduceMax", "ReduceSumSquare"])
def test_opset18_reductions_keep_the_batch_symbol(op):
    """Opset 18 passes axes as an input to every Reduce*; a key-norm ReduceL2 (ToMe) must not stop inference."""
    m = model(
        [helper.make_node(op, ["x", "axes"], ["y"], keepdims=1), helper.make_node("Relu", ["y"], ["z"])],
        [vi("x", ["batch", 10, 8])],
        [vi("z", ["batch", 10, 1])],
        inits=[ints("axes", [-1])],
    )
    assert lint.check_static(m) == []
