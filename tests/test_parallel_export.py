# SPDX-License-Identifier: Apache-2.0
"""The build's second export process: its errors reach the build as its own would, a crash is one sentence, and
leaving early ends it."""
import pytest

from exporter.bundle import planned
from exporter.errors import ExporterError
from exporter.export import parallel
from exporter.spec import BuildSpec
from exporter.stages.progress import Stages
from exporter.console import make as make_console

KWARGS = dict(img_size=(224, 224), batch=(1, 2, 4), opset=18)


@pytest.fixture(autouse=True)
def two_cores(monkeypatch):
    monkeypatch.setattr(parallel, "_cores", lambda: 2)


def test_an_error_in_the_second_process_is_the_builds(tmp_path):
    spec = BuildSpec(model="no_such_vit", weights="random", precision="fp16")
    with parallel.SecondProcess(spec, planned("fp16", False, False), tmp_path, tmp_path, KWARGS) as elsewhere:
        assert [g.file for g in elsewhere.graphs] == ["model.fp16.onnx"]
        with pytest.raises(ExporterError) as e:
            elsewhere.finish(Stages(make_console()))
    assert "no_such_vit" in str(e.value)


def test_a_crash_of_the_second_process_is_one_sentence(tmp_path):
    spec = BuildSpec(model="deit_tiny_patch16_224", weights="random", precision="fp16")
    broken = {k: v for k, v in KWARGS.items() if k != "img_size"}  # the export raises KeyError: a crash, no answer
    with parallel.SecondProcess(spec, planned("fp16", False, False), tmp_path, tmp_path, broken) as elsewhere:
        with pytest.raises(ExporterError) as e:
            elsewhere.finish(Stages(make_console()))
    said = str(e.value)
    assert "The process exporting model.fp16.onnx ended (exit status 1) before it finished" in said
    assert "KeyError: 'img_size'" in said


def test_leaving_early_ends_the_second_process(tmp_path):
    spec = BuildSpec(model="deit_tiny_patch16_224", weights="random", precision="fp16")
    (bundle := tmp_path / "bundle").mkdir()
    with pytest.raises(KeyboardInterrupt):
        with parallel.SecondProcess(spec, planned("fp16", False, False), bundle, tmp_path, KWARGS) as elsewhere:
            raise KeyboardInterrupt
    assert elsewhere._process.poll() is not None  # ended, and reaped
    assert not list(bundle.iterdir())  # killed before it wrote anything


def test_no_second_process_on_one_core_or_for_one_graph(tmp_path, monkeypatch):
    spec = BuildSpec(model="deit_tiny_patch16_224", weights="random", precision="fp32")
    with parallel.SecondProcess(spec, planned("fp32", False, False), tmp_path, tmp_path, KWARGS) as elsewhere:
        assert elsewhere.graphs == [] and elsewhere.finish(Stages(make_console())) == {}
    monkeypatch.setattr(parallel, "_cores", lambda: 1)
    with parallel.SecondProcess(spec, planned("fp16", False, False), tmp_path, tmp_path, KWARGS) as elsewhere:
        assert elsewhere.graphs == []
