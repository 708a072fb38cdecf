"""Every user mistake gives a one-paragraph message with a fix, exit code 2, and no bundle."""
import os
import time

import pytest
import torch

from exporter.cli import main


def run(out, *args):
    return main(["build", "--out", str(out), "--batch", "2", *args])


def no_bundle(out):
    return not out.exists() or [p.name for p in out.iterdir()] == []


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--model", "deit_smal_patch16_224", "--weights", "random"], ["Unknown model 'deit_smal_patch16_224'", "deit_small_patch16_224"]),
        (["--model", "resnet18", "--weights", "random"], ["resnet18 is a ResNet, not a Vision Transformer", "--model"]),
        (["--model", "deit_tiny_patch16_224", "--weights", "random", "--img-size", "200"], ["not divisible", "stride 16", "--img-size"]),
        (["--model", "deit_tiny_patch16_224", "--weights", "/nonexistent/ckpt.pth"], ["/nonexistent/ckpt.pth", "--weights random"]),
        (["--model", "deit_tiny_patch16_224", "--weights", "random", "--method", "magic"], ["Unknown method 'magic'", "evit"]),
        (["--model", "deit_tiny_patch16_224", "--weights", "random", "--batch", "4:2:8"], ["--batch '4:2:8'", "1:8:32"]),
        (["--model", "deit_tiny_patch16_224", "--weights", "random", "--opset", "12"], ["Opset 12", "TensorRT 10.3"]),
        (["--model", "deit_tiny_patch16_224", "--weights", "random", "--io-fp16"], ["--io-fp16", "--precision fp16"]),
    ],
)
def test_bad_input(tmp_path, capsys, args, expected):
    out = tmp_path / "out"
    assert run(out, *args) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "fix:" in err and "Traceback" not in err
    for text in expected:
        assert text in " ".join(err.split()), (text, err)
    assert no_bundle(out)


def test_pretrained_offline_fails_fast(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    assert run(tmp_path / "out", "--model", "deit_tiny_patch16_224", "--weights", "pretrained") == 2
    assert time.perf_counter() - start < 30
    err = " ".join(capsys.readouterr().err.split())
    assert "pretrained weights" in err and "HF_HUB_OFFLINE" in err and "--weights random" in err
    assert no_bundle(tmp_path / "out")


def test_checkpoint_with_wrong_keys(tmp_path, capsys):
    ckpt = tmp_path / "small.pth"
    import timm

    torch.save({"model": timm.create_model("deit_small_patch16_224").state_dict()}, ckpt)
    assert run(tmp_path / "out", "--model", "deit_tiny_patch16_224", "--weights", str(ckpt)) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "does not fit" in err and "size mismatch" in err and "--model" in err
    assert no_bundle(tmp_path / "out")


def test_checkpoint_loads(tmp_path):
    """A timm-layout checkpoint wrapped in {'model': ...} loads into the model it was saved from."""
    import timm

    from exporter.models import create_model

    src = timm.create_model("deit_tiny_patch16_224")
    ckpt = tmp_path / "tiny.pth"
    torch.save({"model": src.state_dict()}, ckpt)
    loaded = create_model("deit_tiny_patch16_224", str(ckpt))
    for k, v in src.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_out(tmp_path, capsys):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    assert run(out, "--model", "deit_tiny_patch16_224", "--weights", "random") == 2
    assert "Cannot write to --out" in capsys.readouterr().err


def test_out_is_a_file(tmp_path, capsys):
    """Works as root too: a file where the output directory should be."""
    out = tmp_path / "file"
    out.write_text("x")
    assert run(out, "--model", "deit_tiny_patch16_224", "--weights", "random") == 2
    assert "Cannot write to --out" in capsys.readouterr().err
    assert out.read_text() == "x"


def test_debug_shows_traceback(tmp_path):
    from exporter.errors import ExporterError

    with pytest.raises(ExporterError):
        main(["--debug", "build", "--out", str(tmp_path), "--model", "resnet18", "--weights", "random"])


def test_failed_verification_leaves_no_bundle(tmp_path, capsys, monkeypatch):
    """A graph that misses the thresholds fails the build (exit 1) and is kept only as <run>.failed."""
    from exporter.checks import parity

    monkeypatch.setattr(parity, "FP32_MAX_ABS", 0.0)  # no real graph matches PyTorch bit for bit
    out = tmp_path / "out"
    assert run(out, "--model", "test_vit", "--weights", "random") == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "max abs error" in err and "FAILED" in err
    (failed,) = [p for p in out.iterdir() if not p.name.startswith(".")]
    assert failed.name.endswith(".failed") and not (failed / "manifest.json").exists()
    assert "FAIL" in (failed / "report.md").read_text()
