# SPDX-License-Identifier: Apache-2.0
"""An int8 bundle of the digits fixture (ToMe): what it holds and records, what TensorRT-RTX makes of its Q/DQ graph,
and that its token choices are made in fp32; and an fp8 bundle (EViT), which TensorRT-RTX builds for SM89. One build
of each per session (test_accuracy measures every method)."""
import json
from collections import Counter

import numpy as np
import onnx
import pytest

from exporter.bundle import read_manifest
from exporter.engine.scripts import parse_build_engine
from exporter.fixtures import digits
from exporter.verify.quantized import judge

SELECTORS = ("TopK", "ArgMax", "ArgMin")


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    calib = tmp_path_factory.mktemp("calib")
    digits.export_split(calib, "train", per_class=25)  # 250 scans: 128 calibrate, 122 judge
    return ["--calib", str(calib), "--calib-samples", "128"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, calib):
    return digits.build(tmp_path_factory.mktemp("int8"), "tome", digits.SETTINGS["tome"][0], precision="int8",
                        calib=calib)


@pytest.fixture(scope="module")
def fp8_bundle(tmp_path_factory, calib):
    return digits.build(tmp_path_factory.mktemp("fp8"), "evit", ["--opset", "19"], precision="fp8", calib=calib)


def test_bundle_records_calibration(bundle):
    manifest, _ = read_manifest(bundle)  # hashes checked: calibration.json and model.int8.onnx among them
    assert {"model.onnx", "model.fp16.onnx", "model.int8.onnx", "calibration.json"} <= set(manifest["files"])
    record = json.loads((bundle / "calibration.json").read_text())
    assert record["calibration_method"] == "MinMax" and record["weights"] == "per output channel"
    assert len(record["images"]["calibrated_on"]) == 128 and record["images"]["held_out"] == 122
    assert record["activation_scales"] and all(s > 0 for s in record["activation_scales"].values())
    judged = record["judged"]
    assert judged["judged"] and not judged["failures"]
    assert len(judged["token_choice_agreement"]) == 2 * 12  # ToMe records two index tensors per block
    assert all(0 < a <= 1 for a in judged["token_choice_agreement"])
    assert manifest["quantized"]["calibrated_on"] == 128 and manifest["spec"]["calib_samples"] == 128


def test_token_choices_are_made_in_fp32(bundle):
    """No Q/DQ value reaches a score: every selector and the nodes feeding it read fp32 tensors, and only MatMul/Gemm
    inputs are quantized."""
    model = onnx.load(str(bundle / "model.int8.onnx"), load_external_data=False)
    producer = {o: n for n in model.graph.node for o in n.output}
    record = json.loads((bundle / "calibration.json").read_text())
    kept = set(record["high_precision"]["scores"]) | set(record["high_precision"]["token_ops"])
    for node in model.graph.node:
        fed = [producer[i] for i in node.input if i in producer and producer[i].op_type == "DequantizeLinear"]
        if node.op_type in SELECTORS or node.name in kept:
            assert not fed, node.name
    quantized = {n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm")
                 and any(i in producer and producer[i].op_type == "DequantizeLinear" for i in n.input)}
    assert quantized == set(record["quantized_nodes"]) and len(quantized) == 12 * 6 + 1  # qkv, QK, PV, proj, fc1, fc2; head


@pytest.mark.parametrize("precision,target,dtype", [("int8", "SM86", "INT8"), ("fp8", "SM89", "FP8")])
def test_tensorrt_rtx_builds_the_8bit_graph(request, precision, target, dtype):
    """TensorRT-RTX (strongly typed, on the CPU) builds the graph for the architecture its type needs, and every Q/DQ
    of the graph is an 8-bit layer of the engine: a QuantizeLinear a QUANTIZE layer, each DequantizeLinear's input (a
    quantized activation or an 8-bit weight) a layer of the 8-bit type, and nothing of the other 8-bit type."""
    bundle = request.getfixturevalue("bundle" if precision == "int8" else "fp8_bundle")
    graph = f"model.{precision}.onnx"
    rtx = json.loads((bundle / "report.json").read_text())["tensorrt_rtx"][graph]
    assert rtx["status"] == "passed", rtx["reason"]
    assert rtx["compute_capability"] == target
    ops = Counter(n.op_type for n in onnx.load(str(bundle / graph), load_external_data=False).graph.node)
    assert ops["QuantizeLinear"] > 0 and rtx["layer_types"]["QUANTIZE"] == ops["QuantizeLinear"]
    assert rtx["layer_types"]["DEQUANTIZE"] == rtx["layer_dtypes"][dtype] == ops["DequantizeLinear"]
    assert not {"INT8", "FP8"} - {dtype} & set(rtx["layer_dtypes"])
    arms = parse_build_engine((bundle / "build_engine.sh").read_text())
    for major in ("10", "11"):
        assert f"--onnx={graph}" in arms[major, precision, "build"]
    assert "--stronglyTyped" in arms["10", precision, "build"]


def test_random_weights_cannot_be_judged():
    assert judge(None, None, None, None, None, 16, "random") == {
        "judged": False, "reason": "random weights: accuracy cannot be judged (build with trained weights)"}


def test_gate_fails_with_the_numbers(bundle, monkeypatch):
    """The gate compares against PyTorch fp32 on the held-out images: an 8-bit graph that predicts another class than
    PyTorch (here right on every image) fails with its top-1 and the allowed drop."""
    import torch

    from exporter.spec import BuildSpec
    from exporter.stages.model import prepare
    from exporter.verify import quantized

    _, model = prepare(BuildSpec.from_dict(read_manifest(bundle)[0]["spec"]))
    images = torch.rand(20, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        labels = model(images).argmax(1).numpy()
    wrong = (labels + 1) % 10
    monkeypatch.setattr(quantized, "_run", lambda path, x, batch: [np.eye(10, dtype=np.float32)[wrong]])

    class Held:
        held_out = list(range(20))

        @staticmethod
        def tensors(indices):
            return images.numpy(), labels

    result = judge(model, bundle / "model.int8.onnx", None, None, Held(), 20, "pretrained")
    assert result["accuracy"]["pytorch fp32"]["top1"] == 100.0 and result["accuracy"]["model.int8.onnx"]["top1"] == 0.0
    assert result["failures"] == ["model.int8.onnx: top-1 0.00% on 20 held-out images is 100.00 points below PyTorch "
                                  "fp32's 100.00% (allowed: 1)"]


def test_bench_times_the_8bit_graph(bundle):
    """`bench` times model.int8.onnx on onnxruntime CPU beside the fp32 and fp16 graphs (integer kernels: graph
    optimisations stay on for an int8 graph, `runtime/ort.py`)."""
    from exporter.bench.bundles import choose_targets, open_bundles

    found, _ = choose_targets(open_bundles([bundle]), cuda=False)
    graphs = {t.runtime: t.model for t in found if t.kind == "ort"}
    assert graphs == {f"onnxruntime CPU {p}": bundle / f for p, f in
                      (("fp32", "model.onnx"), ("fp16", "model.fp16.onnx"), ("int8", "model.int8.onnx"))}
