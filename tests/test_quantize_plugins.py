# SPDX-License-Identifier: Apache-2.0
"""An int8 plugin bundle of the digits fixture (ToMe, --plugins): the plugin graph's Q/DQ twin is written, judged on the
held-out images like the standard 8-bit graph, and no rounded value reaches a plugin node or a score. Its plugin
library is the subset the bundle needs for one architecture (`--archs 86`: ToMe's op, fp32, sm86; seconds to compile),
so TensorRT-RTX builds the 8-bit plugin graph with the library loaded, in the build's check and in `engine`; where
the CUDA toolchain is missing the build says the check was skipped, and so do these tests."""
import json
from collections import Counter

import onnx
import pytest

from exporter.bundle import all_entries, consistency_problems, read_manifest
from exporter.cli import main
from exporter.engine.scripts import flag_problems, parse_build_engine
from exporter.fixtures import digits
from exporter.spec import BuildSpec


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    calib = tmp_path_factory.mktemp("calib")
    digits.export_split(calib, "train", per_class=25)  # 250 scans: 128 calibrate, 122 judge
    return digits.build(tmp_path_factory.mktemp("int8-plugins"), "tome",
                        [*digits.SETTINGS["tome"][0], "--plugins", "--archs", "86"],
                        precision="int8", calib=["--calib", str(calib), "--calib-samples", "128"])


@pytest.fixture(scope="module")
def library(bundle):
    from exporter.ops import library

    why = library.missing_toolchain()
    if why:
        pytest.skip(f"no plugin library: {why}")
    return bundle


def test_plugin_graph_is_quantized_and_judged(bundle):
    manifest, _ = read_manifest(bundle)  # hashes checked
    assert consistency_problems(bundle, manifest, BuildSpec.from_dict(manifest["spec"])) == []  # what `verify` checks
    assert {"model.int8.onnx", "model.plugins.onnx", "model.plugins.int8.onnx", "calibration.json"} <= set(manifest["files"])
    record = json.loads((bundle / "calibration.json").read_text())
    plugins = record["plugins"]
    assert plugins["file"] == "model.plugins.int8.onnx" and len(plugins["high_precision"]["plugins"]) == 12
    assert len(plugins["quantized_nodes"]) == len(record["quantized_nodes"]) == 12 * 6 + 1  # the same heavy products
    judged = record["judged"]
    assert judged["judged"] and not judged["failures"]
    row, fp32 = judged["accuracy"]["model.plugins.int8.onnx"], judged["accuracy"]["pytorch fp32"]
    assert fp32["top1"] - row["top1"] <= 1.0
    agreement = judged["token_choice_agreement_of"]["model.plugins.int8.onnx"]
    assert len(agreement) == 2 * 12 and all(0 < a <= 1 for a in agreement)
    assert manifest["quantized"]["plugins"]["quantized_nodes"] == 73


def test_plugins_and_scores_read_unrounded_tensors(bundle):
    """Every plugin node's inputs are the fp32 tensors its contract declares (no DequantizeLinear output), and so are
    the nodes that compute ToMe's metric; only MatMul/Gemm read Q/DQ values."""
    model = onnx.load(str(bundle / "model.plugins.int8.onnx"), load_external_data=False)
    producer = {o: n for n in model.graph.node for o in n.output}
    record = json.loads((bundle / "calibration.json").read_text())["plugins"]
    kept = {n for names in record["high_precision"].values() for n in names}
    plugin_nodes = [n for n in model.graph.node if n.domain == "exporter"]
    assert len(plugin_nodes) == 12
    for node in model.graph.node:
        fed = [i for i in node.input if i in producer and producer[i].op_type == "DequantizeLinear"]
        if node.name in kept or node.domain == "exporter":
            assert not fed, node.name
        elif fed:
            assert node.op_type in ("MatMul", "Gemm"), node.name


def test_engine_lines(bundle):
    report = json.loads((bundle / "report.json").read_text())
    assert report["tensorrt_rtx"]["model.int8.onnx"]["status"] == "passed"
    arms = parse_build_engine((bundle / "build_engine.sh").read_text())
    for major in ("10", "11"):
        line = arms[major, "plugins-int8", "build"]
        assert "--onnx=model.plugins.int8.onnx" in line and "--dynamicPlugins=plugins/libexporter_plugins.so" in line
        assert flag_problems(line, major) == []


def test_tensorrt_rtx_builds_the_int8_plugin_graph(library):
    """With the library loaded, TensorRT-RTX parses the 12 ToMe nodes into plugin layers next to the Q/DQ of the
    heavy products (every DequantizeLinear an INT8 layer), builds for SM86, and `engine` writes the engine."""
    rtx = json.loads((library / "report.json").read_text())["tensorrt_rtx"]["model.plugins.int8.onnx"]
    assert rtx["status"] == "passed", rtx["reason"]
    assert rtx["compute_capability"] == "SM86" and rtx["num_plugin_layers"] == 12
    ops = Counter(n.op_type for n in onnx.load(str(library / "model.plugins.int8.onnx"), load_external_data=False).graph.node)
    assert rtx["layer_types"]["DEQUANTIZE"] == rtx["layer_dtypes"]["INT8"] == ops["DequantizeLinear"] > 0
    argv = ["engine", str(library), "--graph", "plugins-int8", "--runtime", "tensorrt-rtx", "--target", "sm86",
            "--trust-plugins"]
    assert main(argv) == 0
    (folder, entry), = all_entries(library)
    assert folder == "sm86-tensorrt-rtx" and entry["graph"] == "model.plugins.int8.onnx" and entry["plugin_layers"] == 12
    assert entry["key_fields"]["precision"] == "int8" and entry["key_fields"]["plugin_sha256"]
