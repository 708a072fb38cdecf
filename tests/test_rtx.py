# SPDX-License-Identifier: Apache-2.0
"""TensorRT-RTX parse-and-build check: small graphs, DeiT-Tiny fp32 and fp16, a broken graph, a missing package."""
import contextlib
import os
import sys
from pathlib import Path

import onnx
import pytest
import timm
from onnx import TensorProto, helper
from timm.models.vision_transformer import VisionTransformer

from exporter.bundle import Graph
from exporter.errors import ExporterError
from exporter.export.fp16 import export_fp16
from exporter.export.onnx_export import export_onnx
from exporter.engine import rtx_check as rtx
from exporter.spec import BatchRange, BuildSpec
from exporter.verify.rtx_checks import rtx_checks


def relu_graph(path):
    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["out"], name="act")], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def test_missing_package_is_skipped(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)  # makes `import tensorrt_rtx` raise ImportError
    result = rtx.rtx_check(relu_graph(tmp_path / "relu.onnx"), input_shape_tail=(4,))
    assert result.status == "skipped"
    assert result.reason == "tensorrt_rtx is not installed (pip install 'exporter[rtx]' / tensorrt-rtx-cu13)"


trt = pytest.importorskip("tensorrt_rtx")


def small_vit():
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=10).eval()


@pytest.fixture(scope="module")
def small_graph(tmp_path_factory):
    """A small ViT with a dynamic batch, and its fp16 twin (fp32 inputs and outputs)."""
    folder = tmp_path_factory.mktemp("small")
    vit = small_vit()
    fp32 = export_onnx(vit, folder / "model.onnx", 32, batch=(1, 2, 4))
    fp16 = folder / "model.fp16.onnx"
    export_fp16(vit, fp16, img_size=32, batch=(1, 2, 4))
    return fp32, fp16


def test_small_exported_graph_builds(small_graph):
    result = rtx.rtx_check(small_graph[0], batch=(1, 2, 4), input_shape_tail=(3, 32, 32))
    assert result.status == "passed", result
    assert result.parse_errors == [] and result.reason == ""
    assert result.num_layers > 0 and result.engine_bytes > 0 and result.build_seconds > 0
    assert result.version == trt.__version__
    assert "HALF" not in result.layer_dtypes


def test_fp16_graph_builds_as_fp16(small_graph):
    fp32 = rtx.rtx_check(small_graph[0], batch=(1, 2, 4), input_shape_tail=(3, 32, 32))
    fp16 = rtx.rtx_check(small_graph[1], batch=(1, 2, 4), input_shape_tail=(3, 32, 32))
    assert fp16.status == "passed", fp16
    # Strongly typed: the float layers of the fp16 graph are half, apart from the casts at the fp32 ends.
    assert fp16.layer_dtypes["HALF"] >= fp32.layer_dtypes["FLOAT"] - 2
    assert fp16.layer_dtypes.get("FLOAT", 0) <= 2
    assert fp16.engine_bytes < fp32.engine_bytes


@pytest.fixture(scope="module")
def deit_tiny(tmp_path_factory):
    net = timm.create_model("deit_tiny_patch16_224", pretrained=False, exportable=True)
    return export_onnx(net, tmp_path_factory.mktemp("deit") / "deit.onnx", 224, batch=(2, 2, 2))


def test_deit_tiny_fp32_builds(deit_tiny):
    result = rtx.rtx_check(deit_tiny, batch=(2, 2, 2))
    assert result.status == "passed", result
    assert result.engine_bytes > 5_700_000 * 4  # at least the fp32 weights (5.7M parameters)
    assert sorted(deit_tiny.parent.iterdir()) == [deit_tiny, deit_tiny.with_name("deit.onnx.data")]  # no engine file


def test_unknown_op_fails_with_node_names(tmp_path):
    nodes = [helper.make_node("Relu", ["input"], ["a"], name="act"),
             helper.make_node("NoSuchPlugin", ["a"], ["out"], name="mystery", domain="nowhere")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4])])
    path = tmp_path / "broken.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("nowhere", 1)]),
              str(path))
    result = rtx.rtx_check(path, batch=(1, 1, 1), input_shape_tail=(4,))
    assert result.status == "failed"
    assert "parser rejected" in result.reason
    assert result.parse_errors and all("node 'mystery' (NoSuchPlugin)" in e for e in result.parse_errors)


def test_wrong_input_name(small_graph):
    result = rtx.rtx_check(small_graph[0], input_name="pixels", batch=(1, 2, 4), input_shape_tail=(3, 32, 32))
    assert result.status == "failed"
    assert result.reason == "the graph has no input 'pixels' (inputs: input)"


def test_batch_range_on_a_fixed_batch_graph(deit_tiny):
    result = rtx.rtx_check(deit_tiny, batch=(1, 2, 4))
    assert result.status == "failed" and "fixed at [2, 3, 224, 224]" in result.reason


def test_usage_mistakes_raise(tmp_path):
    with pytest.raises(ExporterError, match="does not exist"):
        rtx.rtx_check(tmp_path / "absent.onnx")
    with pytest.raises(ExporterError, match="min <= opt <= max"):
        rtx.rtx_check(relu_graph(tmp_path / "relu.onnx"), batch=(8, 2, 1), input_shape_tail=(4,))


def test_a_check_started_alongside_finds_what_the_check_here_finds(small_graph):
    """The build's checks run in child processes while it goes on (`start_rtx_check`): the same record as in-process."""
    here = rtx.rtx_check(small_graph[1], batch=(1, 2, 4), input_shape_tail=(3, 32, 32))
    pending = rtx.start_rtx_check(small_graph[1], batch=(1, 2, 4), input_shape_tail=(3, 32, 32))
    alongside = pending.result()
    assert alongside.status == "passed", alongside
    assert (alongside.num_layers, alongside.layer_types, alongside.layer_dtypes, alongside.outputs) == \
        (here.num_layers, here.layer_types, here.layer_dtypes, here.outputs)
    assert pending.result() is alongside  # waited for once


def _rtx_children() -> list[int]:
    """This process's children running `exporter.rtx_child`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if parent == os.getpid() and b"exporter.rtx_child" in (stat.parent / "cmdline").read_bytes():
                found.append(int(stat.parent.name))
    return found


def test_an_interrupt_while_waiting_stops_every_check(small_graph, tmp_path, monkeypatch):
    """Ctrl-C (or an error) while the checks run leaves no TensorRT-RTX child behind."""
    for path in small_graph:
        for f in path, path.with_name(path.name + ".data"):
            if f.exists():
                (tmp_path / f.name).write_bytes(f.read_bytes())
    seen = []

    def interrupted(self):
        seen.append(len(_rtx_children()))
        raise KeyboardInterrupt

    monkeypatch.setattr(rtx.PendingCheck, "result", interrupted)
    graphs = [Graph("model.onnx", "fp32"), Graph("model.fp16.onnx", "fp16")]
    with pytest.raises(KeyboardInterrupt):
        rtx_checks(tmp_path, BuildSpec(model="small", batch=BatchRange(1, 2, 4)), (32, 32), graphs)
    assert seen == [2]  # both were running side by side
    assert _rtx_children() == []  # and are stopped, not left building


def test_an_interrupt_while_a_child_runs_stops_it(monkeypatch):
    """`rtx_child.run` (the `engine` command's plugin builds) waited on by Ctrl-C: the child is killed, not left."""
    import signal

    from exporter import rtx_child

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.alarm(3)  # the child is sleeping by then
        with pytest.raises(KeyboardInterrupt):
            rtx_child.run("time:sleep", 120, "a nap")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert _rtx_children() == []
