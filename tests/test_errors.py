# SPDX-License-Identifier: Apache-2.0
"""Every user mistake gives a one-paragraph message with a fix, exit code 2, and no bundle."""
import os
import random
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
        (["--model", "test_vit", "--weights", "random", "--batch", "a:b:c"], ["--batch 'a:b:c'"]),  # not an emoji code
        (["--model", "deit_tiny_patch16_224", "--weights", "random", "--opset", "12"], ["Opset 12", "TensorRT 10.3"]),
        (["--model", "deit_tiny_patch16_224", "--weights", "random", "--io-fp16"], ["--io-fp16", "--precision fp16"]),
        # method parameters: every failed parse names its flag and value (issue 13 §1)
        (["--model", "test_vit", "--weights", "random", "--method", "evit", "--keep-rate", "abc"], ["--keep-rate 'abc' is not a number", "0.7"]),
        (["--model", "test_vit", "--weights", "random", "--method", "evovit", "--alpha", "x"], ["--alpha 'x' is not a number"]),
        (["--model", "test_vit", "--weights", "random", "--method", "evit", "--fuse", "maybe"], ["--fuse 'maybe'", "not a boolean", "true or false"]),
        # the plugin library's architectures (issue 20 §7)
        (["--model", "test_vit", "--weights", "random", "--archs", "87"], ["--archs names the plugin library", "--plugins"]),
        (["--model", "test_vit", "--weights", "random", "--method", "evit", "--plugins", "--archs", "95"], ["95 is not one it supports", "87 for Jetson Orin"]),
        (["--model", "test_vit", "--weights", "random", "--method", "evit", "--plugins", "--archs", "orin"], ["--archs 'orin'", "e.g. --archs 87,90"]),
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


@pytest.mark.parametrize(
    "content,expected",
    [(b"", ["is empty (0 bytes)", "truncated"])]
    # seeded so the run is repeatable; these seeds trip torch's pickle reader into each exception type it raises
    # on foreign bytes (UnpicklingError, IndexError, KeyError, UnicodeDecodeError), which must all read the same
    + [(random.Random(seed).randbytes(4096), ["not a torch or safetensors state dict", "not a pickle"]) for seed in (0, 2, 20, 195)],
    ids=["empty", "random-bytes-0", "random-bytes-2", "random-bytes-20", "random-bytes-195"],
)
def test_unreadable_checkpoint_is_not_called_a_model_mismatch(tmp_path, capsys, content, expected):
    ckpt = tmp_path / "bad.pth"
    ckpt.write_bytes(content)
    assert run(tmp_path / "out", "--model", "deit_tiny_patch16_224", "--weights", str(ckpt)) == 2
    err = " ".join(capsys.readouterr().err.split())
    for text in expected:
        assert text in err, (text, err)
    assert "does not fit" not in err and "--model" not in err and "EOFError: \n" not in err and "weights_only" not in err
    assert no_bundle(tmp_path / "out")


@pytest.mark.parametrize("flag", ["--batch", "--rounds", "--threads", "--iterations"])
def test_bench_counts_must_be_positive(capsys, flag):
    assert main(["bench", "--model", "test_vit", flag, "0"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"{flag} 0 is not a positive number" in err and "fix:" in err and "Traceback" not in err


def test_ctrl_c_is_one_line_and_cleans_up(tmp_path, capsys, monkeypatch):
    """KeyboardInterrupt mid-build: staging removed, one line, exit 130 (no 90-line traceback)."""
    from exporter.commands import build as build_command

    def interrupted(spec):
        raise KeyboardInterrupt

    monkeypatch.setattr(build_command, "prepare", interrupted)
    out = tmp_path / "out"
    assert run(out, "--model", "test_vit", "--weights", "random") == 130
    err = capsys.readouterr().err
    assert "interrupted (Ctrl-C)" in err and "Traceback" not in err
    assert no_bundle(out)


def test_tome_r_cap_is_recorded_and_said():
    """--r 999 runs as the capped r per block: params (hence manifest and report) say what ran, and a note says why."""
    import timm

    from exporter.methods import apply_method

    model = apply_method(timm.create_model("test_vit").eval(), "tome", r=999)
    assert model.params["r"] == model.r == [50, 25, 12, 6, 3, 2]
    assert model.notes and "capped" in model.notes[0] and "999" in model.notes[0]
    assert not apply_method(timm.create_model("test_vit").eval(), "tome", r=8).notes


def test_rtx_batch_hint_uses_the_cli_syntax(tmp_path):
    from exporter.errors import ExporterError
    from exporter.engine.rtx_check import rtx_check

    graph = tmp_path / "model.onnx"
    graph.write_bytes(b"")
    with pytest.raises(ExporterError) as e:
        rtx_check(graph, batch=(4, 2, 8))
    assert "--batch 1:8:32" in e.value.fix


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


def test_paths_print_as_written(tmp_path, capsys):
    """Brackets and colons in a user's paths are not rich markup or emoji codes (a '[/b]' used to raise)."""
    assert main(["verify", str(tmp_path / "x[/red]:smile:")]) == 2
    assert "x[/red]:smile: is not a bundle" in " ".join(capsys.readouterr().err.split())
    out = tmp_path / "o[/b]"
    assert run(out, "--model", "test_vit", "--weights", "random") == 0
    (bundle,) = out.iterdir()
    assert f"PASSED | {bundle} |" in capsys.readouterr().out


def test_out_of_memory_is_a_sentence_and_other_errors_stay_tracebacks(tmp_path, capsys, monkeypatch):
    """A batch too large for the machine (the allocator's RuntimeError) is exit 2 with a fix and no bundle; any other
    unexpected error is a bug and keeps its traceback."""
    from exporter.commands import build as build_command

    def no_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you tried "
                           "to allocate 30720000000 bytes.")

    monkeypatch.setattr(build_command, "export_here", no_memory)
    out = tmp_path / "out"
    assert run(out, "--model", "test_vit", "--weights", "random") == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "error: ran out of memory ([enforce fail" in err and "fix: Use a smaller --batch" in err and no_bundle(out)
    monkeypatch.setattr(build_command, "export_here", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        run(out, "--model", "test_vit", "--weights", "random")


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
    err = " ".join(capsys.readouterr().err.split())
    assert "Cannot write to --out" in err and "is a file, not a directory" in err
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
    captured = capsys.readouterr()
    stdout = " ".join(captured.out.split())  # the result, with the failed checks
    assert "max abs error" in stdout and "FAILED" in stdout
    # the stage that found the problem says so (issue 13 §2: no ✓ before FAILED)
    assert "✗ verify against PyTorch" in captured.err and "✓ verify against PyTorch" not in captured.err
    (failed,) = [p for p in out.iterdir() if not p.name.startswith(".")]
    assert failed.name.endswith(".failed") and not (failed / "manifest.json").exists()
    assert "FAIL" in (failed / "report.md").read_text()


def test_a_stage_that_found_problems_is_not_ticked():
    """The ✓ marks must not contradict FAILED: a stage reporting problems ends with ✗ and their count."""
    import io

    from rich.console import Console

    from exporter.stages.progress import Stages

    console = Console(file=io.StringIO(), width=200)
    stage = Stages(console)
    with stage("check graphs") as found:
        found.problems = 2
    with stage("TensorRT-RTX parse + build"):
        pass
    with stage("build the plugin library") as outcome:
        outcome.skipped = "cmake is not on PATH"
    text = console.file.getvalue()
    assert "✗ check graphs" in text and "2 problems" in text and "✓ check graphs" not in text
    assert "✓ TensorRT-RTX parse + build" in text
    assert "warning build the plugin library skipped: cmake is not on PATH" in text and "✓ build the plugin" not in text


def test_mismatched_torchvision_is_one_sentence(capsys, monkeypatch):
    """torch and torchvision from different builds fail while timm imports torchvision: one sentence with the fix."""
    from exporter import cli

    def broken():
        raise RuntimeError("operator torchvision::nms does not exist")

    monkeypatch.setattr(cli, "parser", broken)
    assert cli.main(["methods"]) == 2
    err = capsys.readouterr().err
    assert "torch and torchvision do not match" in err and "pip install --force-reinstall torch torchvision" in err
    assert "Traceback" not in err
    with pytest.raises(RuntimeError, match="torchvision::nms"):
        cli.main(["methods", "--debug"])
