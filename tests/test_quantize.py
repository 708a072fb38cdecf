# SPDX-License-Identifier: Apache-2.0
"""An int8 bundle of the digits fixture (ToMe): what it holds and records, what TensorRT-RTX makes of its Q/DQ graph,
and that its token choices are made in fp32. One build per session (test_accuracy measures every method)."""
import json

import numpy as np
import onnx
import pytest

from exporter.bundle import read_manifest
from exporter.engine.scripts import parse_build_engine
from exporter.fixtures import digits
from exporter.verify.quantized import judge

SELECTORS = ("TopK", "ArgMax", "ArgMin")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    calib = tmp_path_factory.mktemp("calib")
    digits.export_split(calib, "train", per_class=25)  # 250 scans: 128 calibrate, 122 judge
    return digits.build(tmp_path_factory.mktemp("int8"), "tome", digits.SETTINGS["tome"][0], precision="int8",
                        calib=["--calib", str(calib), "--calib-samples", "128"])


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


def test_tensorrt_rtx_builds_the_int8_graph(bundle):
    rtx = json.loads((bundle / "report.json").read_text())["tensorrt_rtx"]["model.int8.onnx"]
    assert rtx["status"] == "passed", rtx["reason"]
    assert rtx["compute_capability"] == "SM86" and rtx["layer_dtypes"].get("INT8", 0) > 0
    arms = parse_build_engine((bundle / "build_engine.sh").read_text())
    for major in ("10", "11"):
        assert "--onnx=model.int8.onnx" in arms[major, "int8", "build"]
    assert "--stronglyTyped" in arms["10", "int8", "build"]


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
