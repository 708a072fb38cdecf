"""Every method goes through `build` end to end: static graphs that pass the lint and the TensorRT
compatibility check, parity with PyTorch in fp32 and fp16, and the TensorRT-RTX parse + build.

timm's 6-block `test_vit` (160 px, 101 tokens) keeps this fast; the deit_small builds are in the README.
"""
import importlib.util
import json

import pytest

from exporter.cli import main
from exporter.verify import references

CASES = {
    "none": [],
    "evit": ["--keep-rate", "0.7", "--locations", "1,3"],
    "evovit": ["--keep-rate", "0.5", "--stages", "2,4"],
    "diffrate": ["--prune-kept", "101,90,80,64,50,40", "--merge-kept", "101,85,70,60,44,30"],
    "tome": ["--r", "8"],
}


@pytest.mark.parametrize("method", list(CASES))
def test_method_builds(tmp_path, method):
    out = tmp_path / "out"
    args = ["build", "--model", "test_vit", "--weights", "random", "--method", method, *CASES[method],
            "--precision", "fp16", "--batch", "1:2:4", "--out", str(out)]
    assert main(args) == 0
    (bundle,) = [p for p in out.iterdir() if not p.name.startswith(".")]
    report = json.loads((bundle / "report.json").read_text())
    assert report["passed"]
    assert report["lint"] == {"model.onnx": [], "model.fp16.onnx": []}
    expected = "passed" if importlib.util.find_spec("tensorrt_rtx") else "skipped"
    for graph, rtx in report["tensorrt_rtx"].items():
        assert rtx["status"] == expected, (graph, rtx)
    fp32 = [c for c in report["comparisons"] if c["precision"] == "fp32"]
    assert [c["batch"] for c in fp32] == [1, 2]
    assert all(c["max_abs"] <= 1e-4 for c in fp32)
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
        refs = references.load(bundle / references.REFERENCES)
        assert refs.kept and all(k.shape[0] == 16 for k in refs.kept) and refs.fp16_sensitive.shape == (16,)
        for row in report["references"]:
            assert row["passed"] and row["left_out"] == (int(refs.fp16_sensitive.sum()) if row["precision"] == "fp16" else 0)
        if method == "tome":
            assert report["method_params"] == {"r": [8] * 6, "prop_attn": True}
