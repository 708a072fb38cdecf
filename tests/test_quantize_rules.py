# SPDX-License-Identifier: Apache-2.0
"""Which nodes an 8-bit graph keeps in fp32 (`export.quantize.high_precision_nodes`), on a hand-written block whose
answer is known; and the mistakes `build --precision int8|fp8` and `engine` refuse before any work (exit 2)."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from exporter.cli import main
from exporter.engine.targets import check_precision
from exporter.errors import ExporterError
from exporter.export.quantize import high_precision_nodes
from exporter.spec import BuildSpec

N, C = 8, 4


def _block() -> onnx.ModelProto:
    """One attention block with a class-attention score, a TopK and a merge written as a one-hot product: the shape
    of what the methods export (shared projections, a score region, a choice-derived matrix)."""
    w = lambda name: numpy_helper.from_array(np.ones((C, C), np.float32), name)  # noqa: E731
    const = lambda name, v: numpy_helper.from_array(np.array(v, np.int64), name)  # noqa: E731
    nodes = [
        helper.make_node("MatMul", ["x", "w_q"], ["q"], name="q_proj"),
        helper.make_node("MatMul", ["x", "w_k"], ["k"], name="k_proj"),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1], name="k_t"),
        helper.make_node("MatMul", ["q", "kt"], ["qk"], name="attn_qk"),
        helper.make_node("Softmax", ["qk"], ["p"], axis=-1, name="attn_softmax"),
        helper.make_node("MatMul", ["p", "k"], ["o"], name="attn_pv"),
        helper.make_node("MatMul", ["o", "w_o"], ["y"], name="out_proj"),
        helper.make_node("Slice", ["q", "zero", "one", "one"], ["q_cls"], name="cls_slice"),
        helper.make_node("MatMul", ["q_cls", "kt"], ["s"], name="cls_row"),
        helper.make_node("Softmax", ["s"], ["sp"], axis=-1, name="cls_softmax"),
        helper.make_node("Squeeze", ["sp", "one"], ["score"], name="score_squeeze"),
        helper.make_node("TopK", ["score", "k_keep"], ["vals", "idx"], name="choose"),
        helper.make_node("Unsqueeze", ["idx", "minus_one"], ["idx_u"], name="idx_unsqueeze"),
        helper.make_node("Equal", ["idx_u", "positions"], ["onehot_b"], name="onehot"),
        helper.make_node("Cast", ["onehot_b"], ["onehot"], to=TensorProto.FLOAT, name="onehot_float"),
        helper.make_node("MatMul", ["onehot", "y"], ["kept"], name="gather_as_product"),
    ]
    graph = helper.make_graph(
        nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, N, C])],
        [helper.make_tensor_value_info("kept", TensorProto.FLOAT, [1, 4, C])],
        [w("w_q"), w("w_k"), w("w_o"), const("zero", [0]), const("one", [1]), const("minus_one", [-1]),
         const("k_keep", [4]), const("positions", np.arange(N))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_scores_and_token_ops_stay_high_precision_and_attention_does_not():
    kept = high_precision_nodes(_block())
    assert set(kept["scores"]) == {"cls_slice", "cls_row", "cls_softmax", "score_squeeze", "choose", "k_t"}
    assert set(kept["token_ops"]) == {"idx_unsqueeze", "onehot", "onehot_float", "gather_as_product"}
    assert kept["plugins"] == []
    # the projections and the main attention's products are what 8 bits are for
    matmuls = {n.name for n in _block().graph.node if n.op_type == "MatMul"}
    assert matmuls - set(kept["scores"]) - set(kept["token_ops"]) == {"q_proj", "k_proj", "attn_qk", "attn_pv", "out_proj"}


def test_plugin_nodes_stay_high_precision():
    model = _block()
    model.graph.node.append(helper.make_node("TopkPrune", ["kept"], ["pruned"], domain="trt", name="plugin"))
    assert high_precision_nodes(model)["plugins"] == ["plugin"]


def test_a_choosing_plugin_is_a_choice():
    """The block with its TopK and one-hot product replaced by the TopKPrune plugin node (as `--plugins` exports it):
    the class-attention score feeding the plugin is its score region (so Q·Kᵀ of the class row stays fp32), the
    tokens it moves are not, and what reads its int64 kept indices is a token op."""
    model = _block()
    nodes = [n for n in model.graph.node if n.name not in
             {"choose", "idx_unsqueeze", "onehot", "onehot_float", "gather_as_product"}]
    nodes += [helper.make_node("TopKPrune", ["y", "score"], ["kept", "idx"], domain="exporter", name="prune", k=4, fuse=0),
              helper.make_node("Cast", ["idx"], ["idx_f"], to=TensorProto.FLOAT, name="idx_float")]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    kept = high_precision_nodes(model)
    assert set(kept["scores"]) == {"cls_slice", "cls_row", "cls_softmax", "score_squeeze", "k_t"}
    assert kept["token_ops"] == ["idx_float"] and kept["plugins"] == ["prune"]
    matmuls = {n.name for n in nodes if n.op_type == "MatMul"}
    assert matmuls - set(kept["scores"]) == {"q_proj", "k_proj", "attn_qk", "attn_pv", "out_proj"}


@pytest.mark.parametrize("kwargs,expected", [
    (dict(precision="int8"), "no --calib was given"),
    (dict(precision="fp16", calib="dir"), "--calib calibrates an int8 or fp8 graph"),
    (dict(precision="fp8", calib="dir"), "need ONNX opset 19"),
    (dict(precision="int8", calib="dir", calib_samples=0), "--calib-samples 0"),
])
def test_spec_refuses(kwargs, expected):
    with pytest.raises(ExporterError, match=expected):
        BuildSpec(**kwargs)


def test_quantized_spec_hash_leaves_older_specs_alone():
    assert "calib" not in BuildSpec(precision="fp16").to_dict()
    assert BuildSpec(precision="int8", calib="a").run_name != BuildSpec(precision="int8", calib="b").run_name


def test_fp8_engine_needs_fp8_tensor_cores():
    for target in ("sm86", "sm87"):
        with pytest.raises(ExporterError, match="no fp8 tensor cores"):
            check_precision("fp8", target)
    check_precision("fp8", "sm89")
    check_precision("int8", "sm86")


def _folder(root, classes: int, per_class: int):
    from PIL import Image

    for c in range(classes):
        (root / str(c)).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((8, 8), i * 7 % 255, np.uint8)).save(root / str(c) / f"{i}.png")
    return root


@pytest.mark.parametrize("classes,per_class,expected", [
    (9, 20, "has 9 class folders but the model predicts 10 classes"),
    (10, 5, "has 50 images; calibrating on 256"),
])
def test_build_refuses_a_calibration_folder_before_any_work(tmp_path, capsys, classes, per_class, expected):
    data = _folder(tmp_path / "calib", classes, per_class)
    argv = ["build", "--model", "vit_digits", "--weights", "random", "--precision", "int8", "--calib", str(data),
            "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert expected in err and "fix:" in err and "Traceback" not in err and "export" not in err
    assert not (tmp_path / "out").exists() or not any(p for p in (tmp_path / "out").iterdir() if not p.name.startswith("."))


def test_int8_without_calib_says_what_to_pass(capsys):
    assert main(["build", "--model", "vit_digits", "--precision", "int8"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "no --calib was given" in err and "--calib DIR" in err
