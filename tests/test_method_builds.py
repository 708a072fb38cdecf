# SPDX-License-Identifier: Apache-2.0
"""Every method goes through `build` end to end: static graphs that pass the lint and the TensorRT
compatibility check, parity with PyTorch in fp32 and fp16, and the TensorRT-RTX parse + build; the
reduced ones with `--plugins`, so their plugin graphs (one plugin node per token op per block) are
verified in onnxruntime on the ops' reference and built by TensorRT-RTX with the plugin library.

timm's 6-block `test_vit` (160 px, 101 tokens) keeps this fast; the deit_small builds are in the README.
"""
import collections
import importlib.util
import json
import shutil

import onnx
import pytest

from exporter.cli import main
from exporter.export.fold import fold_constants
from exporter.bundle import read_references
from exporter.verify import references
from toolchain import plugins_buildable

CASES = {
    "none": [],
    "evit": ["--keep-rate", "0.7", "--locations", "1,3"],
    "evovit": ["--keep-rate", "0.5", "--stages", "2,4"],
    "diffrate": ["--prune-kept", "101,90,80,64,50,40", "--merge-kept", "101,85,70,60,44,30"],
    "tome": ["--r", "8"],
}
# plugin nodes in the plugin graph: one per token op per reducing block (DiffRate's first block keeps all)
PLUGIN_NODES = {
    "evit": {"TopKPrune": 2},
    "evovit": {"EvoViTSelect": 2, "EvoViTRestore": 2},
    "diffrate": {"DiffRateReduce": 5},
    "tome": {"ToMeMerge": 6},
}
GRAPHS = ["model.onnx", "model.fp16.onnx"]
PLUGIN_GRAPHS = ["model.plugins.onnx", "model.plugins.fp16.onnx"]


@pytest.mark.parametrize("method", list(CASES))
def test_method_builds(tmp_path, method):
    out = tmp_path / "out"
    plugins = ["--plugins"] if method != "none" else []
    args = ["build", "--model", "test_vit", "--weights", "random", "--method", method, *CASES[method],
            "--precision", "fp16", "--batch", "1:2:4", "--out", str(out), *plugins]
    assert main(args) == 0
    (bundle,) = [p for p in out.iterdir() if not p.name.startswith(".")]
    report = json.loads((bundle / "report.json").read_text())
    assert report["passed"]
    graphs = GRAPHS + (PLUGIN_GRAPHS if plugins else [])
    assert report["lint"] == {g: [] for g in graphs}
    assert sorted({c["graph"] for c in report["comparisons"]}) == sorted(graphs)
    for graph in graphs:  # constant subgraphs were folded before writing (issue 13 §7)
        copy = tmp_path / "fold" / graph
        copy.parent.mkdir(exist_ok=True)
        for f in (graph, graph + ".data"):
            shutil.copy(bundle / f, copy.parent / f)
        assert fold_constants(copy) == 0, graph
    rtx = "passed" if importlib.util.find_spec("tensorrt_rtx") else "skipped"
    built = bool(plugins) and plugins_buildable()
    assert (bundle / "plugins" / "libexporter_plugins.so").is_file() == bool(built)
    for graph, result in report["tensorrt_rtx"].items():
        expected = rtx if graph in GRAPHS or built else "skipped"
        assert result["status"] == expected, (graph, result)
    if plugins:
        for graph in PLUGIN_GRAPHS:
            nodes = onnx.load(str(bundle / graph), load_external_data=False).graph.node
            assert collections.Counter(n.op_type for n in nodes if n.domain == "exporter") == PLUGIN_NODES[method]
            assert len(nodes) < len(onnx.load(str(bundle / graph.replace(".plugins", "")), load_external_data=False).graph.node)
        if built and rtx == "passed":
            plugin_layers = report["tensorrt_rtx"]["model.plugins.onnx"]["plugin_names"]
            assert collections.Counter(plugin_layers) == PLUGIN_NODES[method]
    fp32 = [c for c in report["comparisons"] if c["graph"] == "model.onnx"]
    assert [c["batch"] for c in fp32] == [1, 2, 4]
    assert all(c["max_abs"] <= 1e-4 for c in report["comparisons"] if c["precision"] == "fp32")  # plugin graphs too
    if method == "none":
        assert report["schedule"] is None and report["flops"]["ratio"] == 1
    else:
        assert report["schedule"][-1] < 101 and report["flops"]["ratio"] > 1.1
        assert all(c["token_flips"] is not None for c in report["comparisons"])
        # the parameters the method ran with, defaults filled in, in the report and the manifest
        manifest = json.loads((bundle / "manifest.json").read_text())
        assert manifest["method_params"] == report["method_params"]
        # PyTorch's answers stored for the target: kept indices per reduction, fp16-sensitive samples; onnxruntime
        # on them passes, with only fp16-sensitive samples left out
        refs = read_references(bundle)
        n = len(refs.labels)
        assert refs.kept and all(k.shape[0] == n for k in refs.kept) and refs.fp16_sensitive.shape == (n,)
        assert ((refs.fp16_closeness <= 2) == refs.fp16_sensitive).all()  # the rule, from the stored closeness
        # random images topped up 8 at a time while fewer than 16 samples are held in fp16, up to the cap
        held = ~refs.fp16_sensitive
        assert n <= references.MAX_SAMPLES and (n - 16) % 8 == 0
        assert n == 16 or held[:n - 8].sum() < 16
        assert held.sum() >= 16 or n == references.MAX_SAMPLES
        for row in report["references"]:
            assert row["passed"] and row["left_out"] == (int(refs.fp16_sensitive.sum()) if row["precision"] == "fp16" else 0)
        if method == "tome":
            assert report["method_params"] == {"r": [8] * 6, "prop_attn": True}
