# SPDX-License-Identifier: Apache-2.0
"""The build's second export process: a crash is one sentence, leaving early ends it, and it is started only where it
pays and the model pickles."""
import pytest
import torch

from exporter.bundle import planned
from exporter.console import make as make_console
from exporter.errors import ExporterError
from exporter.export import parallel
from exporter.methods import apply_method
from exporter.models import create_model
from exporter.stages.progress import Stages

KWARGS = dict(img_size=(224, 224), batch=(1, 2, 4), opset=18)


@pytest.fixture(autouse=True)
def two_cores(monkeypatch):
    monkeypatch.setattr(parallel, "_cores", lambda: 2)


@pytest.fixture(scope="module")
def model():
    return apply_method(create_model("deit_tiny_patch16_224", "random"), "none")  # what a dense build exports


def test_a_crash_of_the_second_process_is_one_sentence(model, tmp_path):
    broken = {k: v for k, v in KWARGS.items() if k != "img_size"}  # the export raises KeyError: a crash, no answer
    with parallel.SecondProcess(model, planned("fp16", False, False), tmp_path, tmp_path, broken) as elsewhere:
        assert [g.file for g in elsewhere.graphs] == ["model.onnx"]
        with pytest.raises(ExporterError) as e:
            elsewhere.finish(Stages(make_console()))
    said = str(e.value)
    assert "The process exporting model.onnx ended (exit status 1) before it finished" in said
    assert "KeyError: 'img_size'" in said


def test_leaving_early_ends_the_second_process(model, tmp_path):
    (bundle := tmp_path / "bundle").mkdir()
    with pytest.raises(KeyboardInterrupt):
        with parallel.SecondProcess(model, planned("fp16", False, False), bundle, tmp_path, KWARGS) as elsewhere:
            raise KeyboardInterrupt
    assert elsewhere._process.poll() is not None  # ended, and reaped
    assert not list(bundle.iterdir())  # killed before it wrote anything


def test_no_second_process_on_one_core_for_one_graph_or_a_model_that_does_not_pickle(model, tmp_path, monkeypatch):
    with parallel.SecondProcess(model, planned("fp32", False, False), tmp_path, tmp_path, KWARGS) as elsewhere:
        assert elsewhere.graphs == [] and elsewhere.finish(Stages(make_console())) == {}
    # nor for an 8-bit build: its 8-bit graphs are quantized here from the fp32 ones, which must be here first
    with parallel.SecondProcess(model, planned("int8", False, True), tmp_path, tmp_path, KWARGS) as elsewhere:
        assert elsewhere.graphs == []
    unpicklable = torch.nn.Sequential(model)
    unpicklable.hook = lambda x: x
    with parallel.SecondProcess(unpicklable, planned("fp16", False, False), tmp_path, tmp_path, KWARGS) as elsewhere:
        assert elsewhere.graphs == [] and not list(tmp_path.iterdir())
    monkeypatch.setattr(parallel, "_cores", lambda: 1)
    with parallel.SecondProcess(model, planned("fp16", False, False), tmp_path, tmp_path, KWARGS) as elsewhere:
        assert elsewhere.graphs == []
