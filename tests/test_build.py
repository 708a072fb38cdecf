# SPDX-License-Identifier: Apache-2.0
"""The dense build end to end: bundle contents, parity at an unseen batch size, determinism, verify."""
import json
import platform
from importlib import metadata

import numpy as np
import onnx
import pytest
import torch

from exporter import bundle as artifacts
from exporter.cli import main
from exporter.models import create_model
from exporter.runtime import ort as ort_runtime
from exporter.verify.report import Report

MODEL = "deit_tiny_patch16_224"


def build(out, *extra):
    args = ["build", "--model", MODEL, "--weights", "random", "--batch", "1:2:4", "--out", str(out), *extra]
    assert main(args) == 0
    (bundle,) = [p for p in out.iterdir() if not p.name.startswith(".")]
    return bundle


@pytest.fixture(scope="module")
def fp16_bundle(tmp_path_factory):
    return build(tmp_path_factory.mktemp("out"), "--precision", "fp16")


def test_bundle_contents(fp16_bundle):
    names = {p.name for p in fp16_bundle.iterdir()}
    assert names == {"model.onnx", "model.onnx.data", "model.fp16.onnx", "model.fp16.onnx.data", "manifest.json", "report.json",
                     "report.md", "references.npz", "reproduce.sh", "build_engine.sh"}
    manifest = json.loads((fp16_bundle / "manifest.json").read_text())
    assert fp16_bundle.name == manifest["run_name"] and fp16_bundle.name.startswith(f"{MODEL}-none-fp16-")
    assert manifest["spec"]["weights"] == "random" and manifest["spec"]["batch"] == "1:2:4"
    assert manifest["command"].startswith("python -m exporter build --model")
    assert manifest["tools"]["python"] == platform.python_version()
    for tool in ("torch", "timm", "onnx", "onnxruntime"):  # the versions this process runs, not a placeholder
        assert manifest["tools"][tool] == metadata.version(tool), tool
    assert manifest["opset"] == 18
    assert 1.2 < manifest["flops"]["dense_gmacs"] < 1.3  # DeiT-Ti: 1.3 GMACs published
    exported = {"export fp16 ONNX", "export model.onnx (second process, alongside)"}  # 2 cores here
    assert set(manifest["stages_seconds"]) >= exported | {"verify against PyTorch"}
    io = manifest["io"]["model.fp16.onnx"]
    assert io["inputs"] == [{"name": "input", "dtype": "float32", "shape": ["batch", 3, 224, 224]}]
    assert io["outputs"] == [{"name": "logits", "dtype": "float32", "shape": ["batch", 1000]}]
    for name, digest in manifest["files"].items():
        assert artifacts.sha256(fp16_bundle / name) == digest
    report = json.loads((fp16_bundle / "report.json").read_text())
    assert report["passed"] and Report.load(fp16_bundle / "report.json").to_dict() == report  # nothing lost in the type
    precisions = {(c["precision"], c["batch"]) for c in report["comparisons"]}
    assert precisions == {(p, b) for p in ("fp32", "fp16") for b in (1, 2, 4)}  # min, opt and max of 1:2:4
    assert "PASSED" in (fp16_bundle / "report.md").read_text()


def test_fp16_graph_is_fp16(fp16_bundle):
    graph = onnx.load(str(fp16_bundle / "model.fp16.onnx"), load_external_data=False)
    dtypes = {t.data_type for t in graph.graph.initializer if len(t.dims) == 2}
    assert dtypes == {onnx.TensorProto.FLOAT16}


@pytest.mark.parametrize("graph,atol", [("model.onnx", 1e-4), ("model.fp16.onnx", None)])
def test_unseen_batch_size_matches_pytorch(fp16_bundle, graph, atol):
    """Batch 3 was used neither for export (2) nor for verification (1, 2)."""
    model = create_model(MODEL, "random", 0)
    x = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = model(x).numpy()
    out = ort_runtime.run(ort_runtime.session(fp16_bundle / graph), x.numpy())[0]
    if atol is not None:
        np.testing.assert_allclose(out, ref, atol=atol, rtol=0)
    else:
        cos = (out * ref).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(ref, axis=1)
        assert cos.min() > 0.999


def test_same_spec_gives_identical_onnx(fp16_bundle, tmp_path, monkeypatch):
    """Also: the fp32 graph exported by the build's second process is the one a single process exports."""
    from exporter.export import parallel

    monkeypatch.setattr(parallel, "_cores", lambda: 1)
    again = build(tmp_path, "--precision", "fp16")
    assert again.name == fp16_bundle.name
    for name in ("model.onnx", "model.onnx.data", "model.fp16.onnx", "model.fp16.onnx.data"):
        assert artifacts.sha256(again / name) == artifacts.sha256(fp16_bundle / name), name


def test_verify_command(fp16_bundle, tmp_path, capsys):
    assert main(["verify", str(fp16_bundle)]) == 0
    assert "PASSED" in capsys.readouterr().out  # a result: stdout
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(fp16_bundle, copy)
    data = copy / "model.onnx.data"
    data.write_bytes(data.read_bytes()[:-4] + b"\0\0\0\1")
    assert main(["verify", str(copy)]) == 1
    assert "model.onnx.data" in capsys.readouterr().out
