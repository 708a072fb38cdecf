# SPDX-License-Identifier: Apache-2.0
"""A bundle must not lie, and `verify` must not change it (issue 13 §2).

One checkpoint build of timm's `test_vit` (dense fp32, batch 2) is shared; every tampering test edits a
copy and is refused before any model is built, so they are fast. One full verify covers the rest.
"""
import json
import os
import shutil
import stat

import pytest
import torch

from exporter import bundle as artifacts
from exporter.cli import main


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    import timm

    root = tmp_path_factory.mktemp("bundle")
    ckpt = root / "test_vit.pth"
    torch.manual_seed(1)
    torch.save({"model": timm.create_model("test_vit").state_dict()}, ckpt)
    out = root / "out"
    assert main(["build", "--model", "test_vit", "--weights", str(ckpt), "--batch", "2", "--out", str(out)]) == 0
    (bundle,) = [p for p in out.iterdir() if not p.name.startswith(".")]
    return bundle, ckpt


@pytest.fixture
def copy(built, tmp_path):
    dst = tmp_path / built[0].name
    shutil.copytree(built[0], dst)
    return dst


def edit_manifest(bundle, change):
    manifest = json.loads((bundle / "manifest.json").read_text())
    change(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def verify_fails(capsys, bundle, *expected, code=1):
    assert main(["verify", str(bundle)]) == code
    captured = capsys.readouterr()  # the FAILED line and what failed on stdout, progress on stderr
    err = " ".join((captured.err + captured.out).split())
    assert "Traceback" not in err
    for text in expected:
        assert text in err, (text, err)
    return err


def snapshot(bundle):
    return {p.relative_to(bundle).as_posix(): (p.stat().st_mtime_ns, p.stat().st_mode, artifacts.sha256(p) if p.is_file() else None) for p in [bundle, *bundle.rglob("*")]}


def test_manifest_covers_every_file_and_the_checkpoint(built):
    bundle, ckpt = built
    manifest = json.loads((bundle / "manifest.json").read_text())
    on_disk = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(manifest["files"]) == on_disk >= {"report.json", "report.md", "model.onnx", "model.onnx.data"}
    assert manifest["weights_sha256"] == artifacts.sha256(ckpt) and manifest["weights_path"] == str(ckpt.resolve())


def test_bundle_modes_follow_the_umask(built):
    """Not 0700/0600 from mkdtemp: a bundle is meant to be copied and used by others."""
    bundle, _ = built
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o777 & ~umask
    for p in bundle.iterdir():
        executable = p.suffix == ".sh"  # reproduce.sh, build_engine.sh
        assert stat.S_IMODE(p.stat().st_mode) == (0o777 if executable else 0o666) & ~umask, p.name


def test_random_weights_are_said_at_the_top_of_report_md():
    from reports import report

    head = report(spec={"weights": "random", "seed": 3}).markdown().split("**PASSED**")[0]
    assert "Random weights" in head and "seed 3" in head
    assert "Random weights" not in report(spec={"weights": "/ckpt.pth"}).markdown()


@pytest.mark.parametrize(
    "name,tamper,expected",
    [
        ("command", lambda m: m.update(command=m["command"].replace("--batch 2", "--batch 4")), ["command does not build the recorded spec"]),
        ("io-shape", lambda m: m["io"]["model.onnx"]["inputs"][0]["shape"].__setitem__(0, 8), ["io recorded for model.onnx differs"]),
        ("opset", lambda m: m.update(opset=17), ["opset 17 differs"]),
        ("precision", lambda m: m["spec"].update(precision="fp16"), ["spec hashes to", "model.fp16.onnx is missing"]),
        ("files-emptied", lambda m: m.update(files={}), ["not in the manifest", "model.onnx.data", "report.json"]),
        ("report-unlisted", lambda m: m["files"].pop("report.md"), ["not in the manifest (added after the build): report.md"]),
        ("checkpoint-sha", lambda m: m.pop("weights_sha256"), ["weights_sha256"]),
    ],
)
def test_edited_manifest_is_refused(copy, capsys, name, tamper, expected):
    edit_manifest(copy, tamper)
    verify_fails(capsys, copy, "does not match its manifest", *expected)


def test_edited_fp32_spec_with_fp16_graph_added(copy, capsys):
    """precision edits both ways: a graph the spec does not write is refused even when listed and hashed."""
    shutil.copy(copy / "model.onnx", copy / "model.fp16.onnx")
    edit_manifest(copy, lambda m: m["files"].update({"model.fp16.onnx": artifacts.sha256(copy / "model.fp16.onnx")}))
    verify_fails(capsys, copy, "graphs the build does not describe: model.fp16.onnx")


@pytest.mark.parametrize(
    "name,tamper,expected",
    [
        ("flipped-byte", lambda b: (b / "model.onnx.data").write_bytes((b / "model.onnx.data").read_bytes()[:-1] + b"\7"), ["modified", "model.onnx.data"]),
        ("report-edited", lambda b: (b / "report.md").write_text("all good"), ["modified", "report.md"]),
        ("report-deleted", lambda b: (b / "report.json").unlink(), ["missing from the bundle: report.json"]),
        ("graph-deleted", lambda b: (b / "model.onnx").unlink(), ["missing from the bundle: model.onnx"]),
        ("stray-graph", lambda b: (b / "rogue.onnx").write_bytes(b"x"), ["not in the manifest", "rogue.onnx"]),
        ("stray-hidden", lambda b: (b / ".DS_Store").write_bytes(b"x"), ["not in the manifest", ".DS_Store"]),
        ("stray-subfolder", lambda b: (b / "plugins").mkdir() or (b / "plugins" / "x.so").write_bytes(b"x"), ["plugins/x.so"]),
    ],
)
def test_edited_files_are_refused(copy, capsys, name, tamper, expected):
    tamper(copy)
    verify_fails(capsys, copy, "does not match its manifest", *expected)


def _fail_first_comparison(report: dict) -> None:
    report["comparisons"][0]["failures"] = ["max abs error 1 > 0.0001"]  # its stored "passed" still says true


@pytest.mark.parametrize(
    "name,rewrite,expected",
    [
        ("failed-check", _fail_first_comparison, ["report.json does not record a passed build"]),
        ("not-a-report", lambda r: r.pop("comparisons"), ["report.json is not a report written by", "KeyError"]),
        ("other-run", lambda r: r.update(run_name="another"), ["report.json belongs to another run"]),
    ],
)
def test_rewritten_report_json_is_refused(copy, capsys, name, rewrite, expected):
    """report.json rewritten and re-hashed in the manifest: whether it passed is derived from its checks."""
    report = json.loads((copy / "report.json").read_text())
    rewrite(report)
    (copy / "report.json").write_text(json.dumps(report))
    edit_manifest(copy, lambda m: m["files"].update({"report.json": artifacts.sha256(copy / "report.json")}))
    verify_fails(capsys, copy, "does not match its manifest", *expected)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("{not json", ["is not valid JSON", "line 1"]),
        ("{}", ["lacks run_name", "damaged"]),
        ("[]", ["not a manifest"]),
    ],
)
def test_malformed_manifest_is_one_sentence(copy, capsys, text, expected):
    (copy / "manifest.json").write_text(text)
    verify_fails(capsys, copy, "error:", "fix:", *expected, code=2)


def test_manifest_without_spec_batch(copy, capsys):
    edit_manifest(copy, lambda m: m["spec"].pop("batch"))
    verify_fails(capsys, copy, "spec lacks 'batch'", "fix:", code=2)


def test_unreadable_file_is_one_sentence(copy, capsys, monkeypatch):
    """A file owned by another user (simulated: root reads everything)."""
    def denied(path):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(artifacts.manifest, "sha256", denied)  # where the files are checked against the manifest
    verify_fails(capsys, copy, "Cannot read", "Permission denied", "fix:", code=2)


def test_another_file_at_the_checkpoint_path_is_refused_by_name(built, tmp_path, capsys, monkeypatch):
    bundle, ckpt = built
    other = tmp_path / "other.pth"
    other.write_bytes(ckpt.read_bytes() + b"\0")
    edit = tmp_path / bundle.name
    shutil.copytree(bundle, edit)
    assert main(["verify", str(edit), "--weights", str(other)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"{other} is not the checkpoint this bundle was built from" in err and "--weights PATH" in err


def test_missing_checkpoint_points_at_verify_weights(copy, tmp_path, capsys):
    edit_manifest(copy, lambda m: m.update(weights_path=str(tmp_path / "gone.pth")))
    # weights_path is outside the spec and the file list: changing it only moves where verify looks
    assert main(["verify", str(copy)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "gone.pth this bundle was built from does not exist" in err and "verify BUNDLE --weights PATH" in err
    assert "--weights random" not in err


def test_verify_never_writes_into_the_bundle(built, tmp_path, capsys, monkeypatch):
    """A read-only copy with a moved checkpoint: verify passes, the report goes to --report (and stdout without
    it), the bundle is untouched; a different exporter commit is warned about. Then a failing verify
    (impossible threshold) leaves the bundle as it was too: no FAILED report inside a bundle."""
    from exporter.checks import parity
    from exporter.commands import verify as verify_command

    bundle, ckpt = built
    copy = tmp_path / bundle.name
    shutil.copytree(bundle, copy)
    moved = tmp_path / "moved.pth"
    shutil.copy(ckpt, moved)
    for p in [*copy.iterdir(), copy]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    before = snapshot(copy)
    monkeypatch.setattr(verify_command, "git_commit", lambda: "0000000")
    report = tmp_path / "verify.json"
    try:
        assert main(["verify", str(copy), "--weights", str(moved), "--report", str(report)]) == 0
        captured = capsys.readouterr()
        err = " ".join(captured.err.split())
        assert "PASSED" in captured.out and "warning" in err and "commit 0000000" in err
        assert json.loads(report.read_text())["passed"] is True
        assert snapshot(copy) == before
        monkeypatch.setattr(parity, "FP32_MAX_ABS", 0.0)
        assert main(["verify", str(copy), "--weights", str(moved)]) == 1
        captured = capsys.readouterr()
        assert "FAILED" in captured.out and "✗ verify against PyTorch" in captured.err
        assert "**FAILED**" in captured.out  # the report, on stdout
        assert snapshot(copy) == before
    finally:
        for p in [copy, *copy.iterdir()]:
            p.chmod(0o755 if p.is_dir() else 0o644)


def test_unwritable_report_path_fails_before_any_work(copy, tmp_path, capsys):
    assert main(["verify", str(copy), "--report", str(tmp_path / "missing" / "verify.json")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "--report" in err and "does not exist" in err and "check files" not in err


def test_archs_enter_the_spec_only_when_given():
    """--archs changes the bundle (its library's kernels), so it is in the spec's hash; absent, the spec hashes as it did
    before the flag existed, so older bundles keep their names and verify."""
    from exporter.spec import BuildSpec

    plain = BuildSpec(method="tome", plugins=True)
    assert "archs" not in plain.to_dict() and BuildSpec.from_dict(plain.to_dict()) == plain
    narrow = BuildSpec(method="tome", plugins=True, archs=(87, 90))
    assert narrow.to_dict()["archs"] == [87, 90] and BuildSpec.from_dict(narrow.to_dict()) == narrow
    assert narrow.run_name != plain.run_name


def test_a_method_parameter_added_after_the_build_keeps_old_bundles_consistent(tmp_path):
    """A bundle built before DiffRate had --schedule records no `schedule`; its recorded command still builds its
    spec (the new parameter at its default), while a command that passes the new parameter does not."""
    from exporter.bundle.manifest import consistency_problems
    from exporter.options import CLI, resolve
    from exporter.spec import BuildSpec

    command = CLI + "build --model vit_digits --weights random --method diffrate --flops 2.9"
    params = dict(resolve(BuildSpec(model="vit_digits", weights="random", method="diffrate",
                                    method_params={"flops": 2.9})).method_params)
    del params["schedule"]
    old = BuildSpec(model="vit_digits", weights="random", method="diffrate", method_params=params)
    manifest = {"run_name": old.run_name, "command": command, "opset": old.opset, "files": {}, "io": {}}
    assert not [p for p in consistency_problems(tmp_path, manifest, old) if "recorded command" in p]
    manifest["command"] = command.replace("--flops 2.9", "--schedule s.json")
    assert [p for p in consistency_problems(tmp_path, manifest, old) if "recorded command" in p]
