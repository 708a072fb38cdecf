# SPDX-License-Identifier: Apache-2.0
"""Engines: TensorRT-RTX built for real on the CPU (SM86), the content cache, pre-flight refusals with
fabricated manifests, bad input (exit 2), stored references, reproduce.sh and build_engine.sh parsed back."""
import contextlib
import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import types
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from exporter import bundle as artifacts
from exporter import rtx_child
from exporter.bundle import read_references
from exporter.cli import main, parser
from exporter.engine import cache, preflight, scripts, targets
from exporter.runtime import tensorrt as run_module
from exporter.engine.build import Plan
from exporter.engine.targets import Gpu
from exporter.errors import ExporterError
from exporter.methods import apply_method
from exporter.models import create_model
from exporter.ops import library
from exporter.spec import BatchRange
from exporter.verify import references
from exporter.verify.report import Report

MODEL = "deit_tiny_patch16_224"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    args = ["build", "--model", MODEL, "--weights", "random", "--batch", "1:2:4", "--img-size", "64",
            "--precision", "fp16", "--out", str(out)]
    assert main(args) == 0
    (b,) = [p for p in out.iterdir() if not p.name.startswith(".")]
    return b


def engine(bundle, *extra):
    return main(["engine", str(bundle), "--runtime", "tensorrt-rtx", "--target", "sm86", *extra])


@pytest.fixture(scope="module")
def rtx_bundle(bundle):
    pytest.importorskip("tensorrt_rtx")
    assert engine(bundle) == 0
    return bundle


# --- stored references, reproduce.sh, build_engine.sh ----------------------------------------------


def test_references_are_pytorch_on_the_stored_inputs(bundle):
    refs = read_references(bundle)
    assert refs.inputs.dtype == np.float16 and refs.inputs.shape == (16, 3, 64, 64)
    assert refs.labels[0] == "photo:astronaut" and refs.kept == [] and refs.fp16_sensitive is None
    model = create_model(MODEL, "random", 0, 64)
    with torch.no_grad():
        expected = model(torch.from_numpy(refs.inputs.astype(np.float32))).numpy()
    np.testing.assert_allclose(refs.logits, expected, atol=1e-5, rtol=0)
    manifest = artifacts.read_json(bundle / artifacts.MANIFEST)
    assert {"references.npz", "reproduce.sh", "build_engine.sh"} <= set(manifest["files"])
    stored = Report.load(bundle / artifacts.REPORT_JSON).references
    # build checks them at the range's opt (its parity ran every size); verify runs min, opt and max
    assert {(r.graph, r.batch) for r in stored} == {(g, 2) for g in ("model.onnx", "model.fp16.onnx")}
    assert all(r.passed and r.runtime == "onnxruntime (CPU)" and r.samples == 16 for r in stored)


def test_fp16_rule_leaves_out_sensitive_samples_only():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 10)).astype(np.float32)
    logits[np.arange(6), rng.integers(0, 10, 6)] += 8  # decisive samples
    closeness = np.array([0.5, 40, 3, 2.5, np.inf, 2], np.float32)
    refs = artifacts.References(rng.normal(size=(6, 3, 4, 4)).astype(np.float16), [f"s{i}" for i in range(6)], logits,
                                 [np.zeros((6, 2), np.int16)], closeness <= 2, closeness)

    def answer(wrong):
        state = {"start": 0}

        def run(x):
            out = logits[state["start"]:state["start"] + len(x)].copy()
            for i in range(len(x)):
                if state["start"] + i in wrong:
                    out[i] = -out[i]
            state["start"] = (state["start"] + len(x)) % 6
            return [out]
        return run

    ok = references.check(refs, answer({0, 5}), "model.fp16.onnx", "fp16", [2], "fake")[0]
    assert ok.passed and ok.left_out == 2 and ok.samples == 4 and "2/6 samples left out" in ok.warnings[0]
    bad = references.check(refs, answer({1, 2, 3, 5}), "model.fp16.onnx", "fp16", [2], "fake")[0]
    # the failing held samples are named, closest to rounding first (the likeliest near-ties)
    assert not bad.passed and bad.failures[-1].startswith("failing samples: s3 (2.5x), s2 (3x), s1 (40x) (x: ")
    fp32 = references.check(refs, answer({0}), "model.onnx", "fp32", [2], "fake")[0]
    assert not fp32.passed and fp32.left_out == 0  # fp32: every sample is held to the thresholds
    assert fp32.failures[-1] == "failing samples: s0"


@pytest.mark.parametrize("sensitive_first", [0, 16, 17, 100])
def test_references_top_up_random_images_until_enough_are_held_in_fp16(tmp_path, monkeypatch, sensitive_first):
    """A token-reduction model whose first `sensitive_first` samples each have a choice within fp16 rounding:
    seeded random images are added 8 at a time until 16 samples are held, or the cap is reached."""
    from exporter.checks import margins
    from exporter.checks.inputs import RANDOM_SEED, random_images

    seen = []

    def closeness(self):
        n = self.decisions[0].scores.shape[0]
        ratios = np.where(np.arange(sum(seen), sum(seen) + n) < sensitive_first, 1.5, 7.0)
        seen.append(n)
        return ratios

    monkeypatch.setattr(margins.Rounding, "closeness", closeness)
    model = apply_method(create_model(MODEL, "random", 0, 64), "tome", r=4)
    refs = references.store(model, (64, 64), tmp_path)
    n = {0: 16, 16: 32, 17: 40, 100: references.MAX_SAMPLES}[sensitive_first]
    assert len(refs.labels) == n and refs.labels[15:] == [f"random:{i}" for i in range(7, n - 8)]
    assert all(k.shape[0] == n for k in refs.kept) and refs.logits.shape[0] == n
    if n > 16:
        np.testing.assert_array_equal(refs.inputs[16:24], random_images(8, (64, 64), RANDOM_SEED + 8).half().numpy())
    with torch.no_grad():  # the topped-up samples' answers are PyTorch's too
        np.testing.assert_allclose(refs.logits[16:], model(torch.from_numpy(refs.inputs[16:].astype(np.float32))).numpy(),
                                   atol=1e-5, rtol=0)
    stored = read_references(tmp_path)
    assert stored.labels == refs.labels and (stored.fp16_sensitive == (np.arange(n) < sensitive_first)).all()
    np.testing.assert_array_equal(stored.fp16_closeness, np.where(np.arange(n) < sensitive_first, 1.5, 7.0))


def test_reproduce_sh_is_the_build_command(bundle):
    text = (bundle / scripts.REPRODUCE).read_text()
    (line,) = [l for l in text.splitlines() if l.startswith("python -m exporter ")]
    argv = shlex.split(line)[3:]
    from exporter.options import resolve, spec_from_args

    assert resolve(spec_from_args(parser().parse_args(argv))).run_name == bundle.name
    assert line == artifacts.read_json(bundle / artifacts.MANIFEST)["command"]
    assert subprocess.run(["sh", "-n", str(bundle / scripts.REPRODUCE)]).returncode == 0


def test_build_engine_sh_uses_only_flags_each_trtexec_accepts(bundle):
    text = (bundle / scripts.BUILD_ENGINE).read_text()
    arms = scripts.parse_build_engine(text)
    assert set(arms) == {(m, g, a) for m in ("10", "11") for g in ("fp32", "fp16") for a in ("build", "time")}
    for (major, graph, action), argv in arms.items():
        assert argv[0] == "$TRTEXEC"
        assert scripts.flag_problems(argv, major) == [], (major, graph, action)
        flags = dict(a.split("=", 1) if "=" in a else (a, "") for a in argv[1:])
        assert "--fp16" not in flags  # strongly typed: the fp16 graph carries the precision
        if action == "build":
            assert (bundle / flags["--onnx"]).is_file()
            assert ("--stronglyTyped" in flags) == (major == "10")
            assert [flags[f"--{k}Shapes"] for k in ("min", "opt", "max")] == [f"input:{b}x3x64x64" for b in (1, 2, 4)]
        else:
            assert flags["--shapes"] == "input:2x3x64x64"
            assert ("--useCudaGraph" in flags) == (major == "10")
    assert subprocess.run(["bash", "-n", str(bundle / scripts.BUILD_ENGINE)]).returncode == 0


def test_flag_table_catches_what_a_version_lacks():
    assert scripts.flag_problems(["$TRTEXEC", "--onnx=m.onnx", "--fp16"], "11") == ["--fp16: trtexec 11.1 has no such flag"]
    assert scripts.flag_problems(["$TRTEXEC", "--stronglyTyped"], "11") == ["--stronglyTyped: deprecated (a no-op) in trtexec 11.1"]
    assert scripts.flag_problems(["$TRTEXEC", "--noCudaGraph"], "10") == [
        "--noCudaGraph: trtexec 10.3 has no such flag", "--noCudaGraph: trtexec 10.13 has no such flag"]
    assert scripts.flag_problems(["$TRTEXEC", "onnx=m.onnx"], "10") == ["onnx=m.onnx: not a --flag[=value] argument"]


@pytest.mark.parametrize("banner,major", [("[TensorRT v100300]", "10"), ("[TensorRT v110100]", "11")])
def test_build_engine_sh_runs_the_arm_of_the_trtexec_it_finds(bundle, tmp_path, banner, major):
    """A stand-in trtexec records its arguments: the script picks the arm from the version banner."""
    log = tmp_path / "args"
    fake = tmp_path / "trtexec"
    fake.write_text(f'#!/bin/sh\necho "&&&& RUNNING TensorRT.trtexec {banner} # trtexec $*"\n'
                    f'[ "$1" = --help ] && exit 0\nfor a in "$@"; do echo "$a" >> {log}; done\n')
    fake.chmod(0o755)
    copy_ = tmp_path / "bundle"
    shutil.copytree(bundle, copy_, ignore=shutil.ignore_patterns("*.data", "engines"))
    env = {**os.environ, "TRTEXEC": str(fake)}
    env.pop("TRT_MAJOR", None)
    subprocess.run(["bash", str(copy_ / scripts.BUILD_ENGINE), "fp16", "build"], env=env, check=True)
    expected = scripts.parse_build_engine((bundle / scripts.BUILD_ENGINE).read_text())[major, "fp16", "build"][1:]
    assert log.read_text().split("\n")[:-1] == [a.replace("$TRT_MAJOR", major) for a in expected]
    assert (copy_ / "engines" / "trtexec").is_dir()
    wrong = subprocess.run(["bash", str(copy_ / scripts.BUILD_ENGINE), "plugins"], env=env, capture_output=True, text=True)
    assert wrong.returncode == 2 and "no command for TensorRT" in wrong.stderr


# --- TensorRT-RTX engine, built for real on the CPU ------------------------------------------------


def verify_report(bundle, tmp_path, *extra):
    """`verify` with its report written to files outside the bundle: (report.json content, report.md text)."""
    out = tmp_path / "verify"
    out.mkdir(exist_ok=True)
    for name in ("report.json", "report.md"):
        assert main(["verify", str(bundle), *extra, "--report", str(out / name)]) == 0
    return artifacts.read_json(out / "report.json"), (out / "report.md").read_text()


def test_rtx_engine_for_sm86_is_built_recorded_and_reused(rtx_bundle, capsys, tmp_path, monkeypatch):
    import tensorrt_rtx

    folder = rtx_bundle / "engines" / "sm86-tensorrt-rtx"
    data = json.loads((folder / "engine.json").read_text())
    entry = data["entries"]["model.fp16.onnx"]
    assert entry["runtime"] == "tensorrt-rtx" and entry["runtime_version"] == tensorrt_rtx.__version__
    assert entry["target"] == "sm86" and entry["flags"] == ["STRONGLY_TYPED", "compute_capability=sm86"]
    assert entry["sha256"] == artifacts.sha256(folder / "model.fp16.engine") and entry["bytes"] > 1_000_000
    assert entry["build_seconds"] > 0 and entry["key_fields"]["profile"] == {"min": 1, "opt": 2, "max": 4, "shape": [3, 64, 64]}
    assert entry["timing_cache"].startswith("not used") and not (folder / "timing.cache").exists()  # no-ops in RTX
    assert not any(k.startswith("engines/") for k in artifacts.file_hashes(rtx_bundle))
    mtime = (folder / "model.fp16.engine").stat().st_mtime_ns
    capsys.readouterr()
    assert engine(rtx_bundle) == 0
    assert "cache hit" in capsys.readouterr().err
    assert (folder / "model.fp16.engine").stat().st_mtime_ns == mtime
    monkeypatch.setattr(targets, "gpu_present", lambda: None)
    report, md = verify_report(rtx_bundle, tmp_path, "--references-only")  # `engine` leaves the build's report as it was
    assert [(e["folder"], e["status"]) for e in report["engines"]] == [("sm86-tensorrt-rtx", "skipped")]
    order = ["**PASSED**", "## What was built", "## Parity against PyTorch", "## Engines per target", "## Throughput", "## Skipped"]
    assert [md.index(h) for h in order] == sorted(md.index(h) for h in order)
    assert "engines/sm86-tensorrt-rtx/model.fp16.engine" in md


def test_force_rebuilds(rtx_bundle, tmp_path, capsys):
    copy_ = tmp_path / "b"
    shutil.copytree(rtx_bundle, copy_)
    assert engine(copy_, "--graph", "fp32") == 0  # another graph, same folder: a miss
    capsys.readouterr()
    assert engine(copy_, "--graph", "fp32", "--force") == 0
    assert "cache miss (--force), built in" in capsys.readouterr().err
    folder = copy_ / "engines" / "sm86-tensorrt-rtx"
    entries = artifacts.read_folder(folder)["entries"]
    assert set(entries) == {"model.onnx", "model.fp16.onnx"}
    old = dict(entries["model.fp16.onnx"], key="0" * 64)  # as if built by another TensorRT-RTX
    old["key_fields"] = dict(old["key_fields"], runtime_version="1.6.0.1")
    artifacts.write_entry(folder, "model.fp16.onnx", old)
    capsys.readouterr()
    assert engine(copy_) == 0
    assert "cache miss (changed: runtime_version), built in" in " ".join(capsys.readouterr().err.split())
    assert entries["model.onnx"]["key"] != entries["model.fp16.onnx"]["key"]


def test_builds_into_one_engine_folder_take_turns(rtx_bundle):
    """A second `engine` into a folder another build holds waits (and says so), then finds the engine cached: two
    builds never share engine.json's read-modify-write or a plan's temp file."""
    import io
    import threading

    from rich.console import Console

    from exporter.engine.build import build_engine

    folder = rtx_bundle / "engines" / "sm86-tensorrt-rtx"
    log, results = io.StringIO(), []
    second = threading.Thread(target=lambda: results.append(
        build_engine(rtx_bundle, None, "tensorrt-rtx", "sm86", console=Console(file=log))))
    with cache.locked(folder, Console(file=io.StringIO())):
        second.start()
        for _ in range(600):  # until it is waiting: it must not get past the lock while this build holds it
            if "waiting for another engine build" in log.getvalue():
                break
            second.join(0.1)
        assert "waiting for another engine build" in log.getvalue() and not results
    second.join(120)
    assert len(results) == 1 and results[0].cache_hit


def test_tensorrt_timing_cache_is_reused_or_replaced(tmp_path):
    from exporter.engine.network import use_timing_cache

    class Config:  # the two IBuilderConfig calls, with a cache that fits only this "GPU"
        def __init__(self, fits):
            self.fits, self.given = fits, []

        def create_timing_cache(self, blob):
            return ("cache", blob)

        def set_timing_cache(self, tcache, ignore_mismatch):
            assert ignore_mismatch is False
            self.given.append(tcache[1])
            return self.fits or tcache[1] == b""

    path = tmp_path / "timing.cache"
    assert use_timing_cache(Config(True), path) == "new"
    path.write_bytes(b"tactics")
    config = Config(True)
    assert use_timing_cache(config, path) == "reused" and config.given == [b"tactics"]
    config = Config(False)
    assert use_timing_cache(config, path).startswith("replaced") and config.given == [b"tactics", b""]


def test_cache_key_covers_every_input(bundle):
    base = Plan(bundle, bundle / "model.fp16.onnx", None, "tensorrt-rtx", "1.7.1.116", "sm86", "x", "input", (3, 64, 64),
                BatchRange(1, 2, 4))
    key = cache.key(base.key_fields())
    assert cache.key(base.key_fields()) == key
    changes = [dict(graph=bundle / "model.onnx"), dict(version="1.7.2"), dict(target="sm89"), dict(runtime="tensorrt"),
               dict(batch=BatchRange(1, 4, 4)), dict(input_shape=(3, 32, 32)), dict(plugin=bundle / "reproduce.sh")]
    keys = {cache.key(replace(base, **c).key_fields()) for c in changes}
    assert key not in keys and len(keys) == len(changes)


def test_graph_content_is_in_the_key(bundle, tmp_path):
    copy_ = tmp_path / "b"
    shutil.copytree(bundle, copy_, ignore=shutil.ignore_patterns("engines"))
    before = artifacts.graph_sha256(copy_ / "model.fp16.onnx")
    data = copy_ / "model.fp16.onnx.data"
    data.write_bytes(data.read_bytes()[:-2] + b"\1\1")  # the weights, not the graph file
    assert artifacts.graph_sha256(copy_ / "model.fp16.onnx") != before


# --- pre-flight --------------------------------------------------------------------------------------


def _entry(bundle):
    return artifacts.read_folder(bundle / "engines" / "sm86-tensorrt-rtx")["entries"]["model.fp16.onnx"]


def test_preflight_names_both_sides_and_the_rebuild(rtx_bundle):
    entry = _entry(rtx_bundle)
    v = entry["runtime_version"]
    ok = preflight.Present("tensorrt-rtx", v, Gpu("NVIDIA GeForce RTX 3090", "sm86"))
    preflight.check(rtx_bundle, "sm86-tensorrt-rtx", entry, ok)
    built = "engines/sm86-tensorrt-rtx/model.fp16.engine was built "
    cases = [  # only what differs is said
        (replace(ok, version="1.8.0.1"), f"with TensorRT-RTX {v}, but this machine has TensorRT-RTX 1.8.0.1.",
         ["--runtime tensorrt-rtx --target sm86 --force"]),
        (replace(ok, gpu=Gpu("NVIDIA GeForce RTX 4090", "sm89")), "for sm86, but this machine has sm89 (NVIDIA GeForce RTX 4090).",
         ["--target sm89 --force"]),
        (replace(ok, gpu=None), "for sm86, but this machine has no CUDA GPU to run it on.", ["--engine sm86-tensorrt-rtx"]),
        (replace(ok, version="1.8.0.1", gpu=None),
         f"with TensorRT-RTX {v} for sm86, but this machine has TensorRT-RTX 1.8.0.1 and no CUDA GPU to run it on.", []),
        (replace(ok, version=None), None, ["TensorRT-RTX is not installed here", "pip install"]),
    ]
    for here, problem, words in cases:
        with pytest.raises(ExporterError) as e:
            preflight.check(rtx_bundle, "sm86-tensorrt-rtx", entry, here)
        if problem is not None:
            assert e.value.problem == built + problem, e.value.problem
        text = e.value.problem + " " + e.value.fix
        assert all(w in text for w in words), (text, words)


def test_preflight_on_a_fabricated_tensorrt_manifest(rtx_bundle):
    """A TensorRT 10.13 engine for an H100 brought to a JetPack 6 Orin."""
    entry = dict(_entry(rtx_bundle), runtime="tensorrt", runtime_version="10.13.3.9", target="sm90", gpu="NVIDIA H100")
    with pytest.raises(ExporterError) as e:
        preflight.check(rtx_bundle, "sm86-tensorrt-rtx", entry, preflight.Present("tensorrt", "10.3.0.30", Gpu("Orin", "sm87")))
    assert e.value.problem.endswith("was built with TensorRT 10.13.3.9 for sm90, but this machine has TensorRT 10.3.0.30 on sm87 (Orin).")
    assert f"python -m exporter engine {rtx_bundle} --graph fp16 --runtime tensorrt --target sm87 --force" in e.value.fix


def test_stale_and_modified_engines_are_refused(rtx_bundle, tmp_path, capsys):
    copy_ = tmp_path / "b"
    shutil.copytree(rtx_bundle, copy_)
    entry = _entry(copy_)
    here = preflight.Present("tensorrt-rtx", entry["runtime_version"], Gpu("RTX 3090", "sm86"))
    stale = copy.deepcopy(entry)
    stale["key_fields"]["graph_sha256"] = "0" * 64
    with pytest.raises(ExporterError, match="is stale: it was built from another model.fp16.onnx"):
        preflight.check(copy_, "sm86-tensorrt-rtx", stale, here)
    plan = copy_ / "engines" / "sm86-tensorrt-rtx" / "model.fp16.engine"
    plan.write_bytes(plan.read_bytes()[:-1] + b"\0")
    capsys.readouterr()
    assert main(["verify", str(copy_), "--engine", "sm86"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "differs from its manifest" in err and "--force" in err and "Traceback" not in err
    capsys.readouterr()
    assert engine(copy_) == 0  # the cache notices the modified plan and rebuilds it
    assert "cache miss (the plan file differs from its manifest), built in" in " ".join(capsys.readouterr().err.split())


def test_verify_refuses_the_engine_without_a_gpu_and_passes_on_onnxruntime(rtx_bundle, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(targets, "gpu_present", lambda: None)
    capsys.readouterr()
    assert main(["verify", str(rtx_bundle), "--engine", "sm86-tensorrt-rtx"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "no CUDA GPU to run it on" in err and "on an sm86 GPU" in err and "Traceback" not in err
    report, md = verify_report(rtx_bundle, tmp_path)
    assert "skipped engines/sm86-tensorrt-rtx/model.fp16.engine: " in " ".join(capsys.readouterr().err.split())
    (row,) = report["engines"]
    assert row["status"] == "skipped" and "no CUDA GPU" in row["reason"]
    assert "skipped" in md


def test_verify_on_the_stored_references_alone(rtx_bundle, tmp_path, capsys, monkeypatch):
    """--references-only needs no model: create_model is made to fail, and verify still passes."""
    import exporter.commands.verify as verify_command

    monkeypatch.setattr(verify_command, "prepare", lambda spec: pytest.fail("the model was loaded"))
    monkeypatch.setattr(targets, "gpu_present", lambda: None)
    capsys.readouterr()
    report, _ = verify_report(rtx_bundle, tmp_path, "--references-only")
    assert len(report["references"]) == 6 and report["engines"][0]["status"] == "skipped"
    assert main(["verify", str(rtx_bundle), "--references-only", "--engine", "sm86"]) == 2
    copy_ = tmp_path / "b"
    shutil.copytree(rtx_bundle, copy_)
    refs = np.load(copy_ / "references.npz")
    arrays = {k: refs[k] for k in refs.files}
    arrays["logits"] = arrays["logits"] + 1  # a tampered reference is caught by the manifest's hashes
    np.savez_compressed(copy_ / "references.npz", **arrays)
    capsys.readouterr()
    assert main(["verify", str(copy_), "--references-only"]) == 1
    assert "references.npz" in capsys.readouterr().out  # what failed: with the FAILED line, on stdout


# --- the plugin graph on TensorRT-RTX: built in a child process that can open libtensorrt_rtx.so -----------


@pytest.fixture(scope="module")
def plugin_bundle(tmp_path_factory):
    """timm's test_vit with EViT's two TopKPrune plugin nodes, and the plugin library (kernels cached per user)."""
    pytest.importorskip("tensorrt_rtx")
    missing = library.missing_toolchain()
    if missing:
        pytest.skip(f"the plugin library cannot be built here: {missing}")
    out = tmp_path_factory.mktemp("plugins-out")
    assert main(["build", "--model", "test_vit", "--weights", "random", "--method", "evit", "--keep-rate", "0.7",
                 "--locations", "1,3", "--batch", "1:2:4", "--plugins", "--out", str(out)]) == 0
    (b,) = [p for p in out.iterdir() if not p.name.startswith(".")]
    return b


@pytest.fixture
def in_child(monkeypatch):
    """Force the child-process build even where a libtensorrt_rtx.so link resolves in this process."""
    monkeypatch.setattr(rtx_child, "link_resolvable", lambda: False)


def _plugin_entry(bundle):
    return artifacts.read_folder(bundle / "engines" / "sm86-tensorrt-rtx")["entries"]["model.plugins.onnx"]


def test_plugin_bundle_built_without_the_toolchain_names_why_it_has_no_library(tmp_path, capsys, monkeypatch):
    """Where the build found no toolchain, the plugin graphs are still written and verified; `engine` on them says
    why the library is missing and where to rebuild, instead of only 'rebuild'."""
    pytest.importorskip("tensorrt_rtx")
    monkeypatch.setattr(library, "missing_toolchain", lambda *a, **k: "cmake is not on PATH")
    assert main(["build", "--model", "test_vit", "--weights", "random", "--method", "evit", "--locations", "1,3",
                 "--batch", "2", "--plugins", "--out", str(tmp_path)]) == 0
    (bundle,) = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
    assert (bundle / "model.plugins.onnx").is_file() and not (bundle / artifacts.PLUGIN_LIBRARY).exists()
    _fails(capsys, ["engine", str(bundle), "--graph", "plugins", "--runtime", "tensorrt-rtx", "--target", "sm86"],
           "has model.plugins.onnx but no plugin library plugins/libexporter_plugins.so: its build skipped it "
           "(cmake is not on PATH)", "where cmake, nvcc and TensorRT's headers are found", "--graph fp32 for the standard")


def test_rtx_plugin_engine_is_built_reused_and_forced(plugin_bundle, in_child, tmp_path, capsys, monkeypatch):
    b = tmp_path / "b"
    shutil.copytree(plugin_bundle, b)
    assert engine(b, "--graph", "plugins", "--trust-plugins") == 0
    folder = b / "engines" / "sm86-tensorrt-rtx"
    entry = _plugin_entry(b)
    check = artifacts.read_json(b / artifacts.REPORT_JSON)["tensorrt_rtx"]["model.plugins.onnx"]  # the build's own check
    assert entry["plugin_layers"] == check["num_plugin_layers"] == 2 and entry["num_layers"] == check["num_layers"]
    assert entry["plugin_library"] == artifacts.PLUGIN_LIBRARY
    assert entry["key_fields"]["plugin_sha256"] == artifacts.sha256(b / artifacts.PLUGIN_LIBRARY)
    assert entry["sha256"] == artifacts.sha256(folder / "model.plugins.engine") and entry["bytes"] == check["engine_bytes"]
    assert entry["build_seconds"] > 0 and sorted(p.name for p in folder.iterdir()) == ["engine.json", "model.plugins.engine"]
    mtime = (folder / "model.plugins.engine").stat().st_mtime_ns
    capsys.readouterr()
    assert engine(b, "--graph", "plugins", "--trust-plugins") == 0
    assert "cache hit" in capsys.readouterr().err and (folder / "model.plugins.engine").stat().st_mtime_ns == mtime
    assert engine(b, "--graph", "plugins", "--force", "--trust-plugins") == 0
    assert "cache miss (--force), built in" in " ".join(capsys.readouterr().err.split())
    assert _plugin_entry(b)["sha256"] == entry["sha256"]
    monkeypatch.setattr(targets, "gpu_present", lambda: None)
    report, md = verify_report(b, tmp_path, "--references-only")
    (row,) = report["engines"]
    assert (row["engine"], row["status"]) == ("model.plugins.engine", "skipped") and "no CUDA GPU to run it on" in row["reason"]
    assert "engines/sm86-tensorrt-rtx/model.plugins.engine" in md


def test_rtx_plugin_engine_in_a_child_is_the_in_process_one(plugin_bundle, in_child, tmp_path):
    """Where libtensorrt_rtx.so resolves (a user's symlink on LD_LIBRARY_PATH), `engine` builds in its own process:
    the same plan bytes and the same manifest entry as the child's build."""
    child, here = tmp_path / "child", tmp_path / "here"
    for b in (child, here):
        shutil.copytree(plugin_bundle, b, ignore=shutil.ignore_patterns("engines"))
    link = tmp_path / "link"
    link.mkdir()
    (link / rtx_child.LINK).symlink_to(rtx_child.wheel_libs() / f"{rtx_child.LINK}.1")
    argv = ["engine", str(here), "--graph", "plugins", "--runtime", "tensorrt-rtx", "--target", "sm86", "--trust-plugins"]
    script = ("import sys; from exporter import rtx_child; from exporter.cli import main; "
              f"assert rtx_child.link_resolvable(); sys.exit(main({argv!r}))")
    env = {**os.environ, "LD_LIBRARY_PATH": str(link), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert engine(child, "--graph", "plugins", "--trust-plugins") == 0
    a, b = _plugin_entry(child), _plugin_entry(here)
    differ = {k for k in a if a[k] != b[k]}
    assert differ <= {"build_seconds", "built_at"} and set(a) == set(b)
    assert (child / "engines/sm86-tensorrt-rtx/model.plugins.engine").read_bytes() == \
        (here / "engines/sm86-tensorrt-rtx/model.plugins.engine").read_bytes()


def _rehash(bundle: Path, name: str) -> None:
    """Record a file's new sha256 in the bundle's manifest."""
    manifest = json.loads((bundle / artifacts.MANIFEST).read_text())
    manifest["files"][name] = artifacts.sha256(bundle / name)
    (bundle / artifacts.MANIFEST).write_text(json.dumps(manifest))


def test_rtx_plugin_engine_failures_in_the_child_are_one_sentence(plugin_bundle, in_child, tmp_path, capsys, monkeypatch):
    bad = tmp_path / "bad"
    shutil.copytree(plugin_bundle, bad)
    model = onnx.load(str(bad / "model.plugins.onnx"), load_external_data=False)
    node = [n for n in model.graph.node if n.op_type == "TopKPrune"][0]
    [a for a in node.attribute if a.name == "fuse"][0].i = 2  # the plugin's creator refuses it
    onnx.save(model, str(bad / "model.plugins.onnx"))
    _rehash(bad, "model.plugins.onnx")  # as if built so: `engine` refuses files that differ from the manifest first
    argv = ["engine", str(bad), "--graph", "plugins", "--runtime", "tensorrt-rtx", "--target", "sm86", "--trust-plugins"]
    _fails(capsys, argv, "ONNX parser rejected model.plugins.onnx", f"'{node.name}' (TopKPrune)",
           "attribute 'fuse' = 2 must be 0 or 1", "Rebuild the bundle")
    (bad / artifacts.PLUGIN_LIBRARY).write_bytes(b"not a library")
    _rehash(bad, artifacts.PLUGIN_LIBRARY)
    _fails(capsys, argv, "could not load the plugin library plugins/libexporter_plugins.so")
    # a child that dies (TensorRT-RTX aborting) leaves one sentence and no plan behind
    died = rtx_child.Child(None, None, -6, "[E] [exporter plugins] TopKPrune: oops\nterminate called without an active exception\n")
    monkeypatch.setattr(rtx_child, "start", lambda *args, **kwargs: contextlib.nullcontext(types.SimpleNamespace(wait=lambda: died)))
    _fails(capsys, argv, "The process building model.plugins.onnx with TensorRT-RTX", "was killed by SIGABRT",
           "'terminate called without an active exception'", "the plugin library logged: [exporter plugins] TopKPrune: oops")
    assert [p.name for p in (bad / "engines" / "sm86-tensorrt-rtx").iterdir()] == []


def test_rtx_child_reports_how_it_ended():
    pytest.importorskip("tensorrt_rtx")
    ok = rtx_child.run("builtins:dict", {"a": 1}, "a copy")
    assert (ok.answer, ok.error, ok.returncode) == ({"a": 1}, None, 0)
    refused = rtx_child.run("exporter.engine.targets:parse_target", "ampere", "a parse")
    assert refused.answer is None and "not a compute capability" in refused.error.problem and refused.returncode == 2
    raised = rtx_child.run("os.path:join", ["a"], "a join")  # TypeError: a traceback on stderr, no answer
    assert raised.answer is raised.error is None and raised.death().startswith("ended with exit status 1 (its last message: 'TypeError")
    assert rtx_child.run("os:_exit", 3, "an exit").death() == "ended with exit status 3 (no message)"
    assert rtx_child.run("signal:raise_signal", 6, "an abort").death().startswith("was killed by SIGABRT")


# --- bad input: exit 2, one sentence with the fix ------------------------------------------------------


def _fails(capsys, argv, *words):
    capsys.readouterr()
    assert main(argv) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "Traceback" not in err and "fix:" in err
    for w in words:
        assert w in err, (w, err)


def test_bad_input_exits_2(bundle, tmp_path, capsys, monkeypatch):
    b = str(bundle)
    _fails(capsys, ["engine", str(tmp_path), "--runtime", "tensorrt-rtx", "--target", "sm86"], "is not a bundle")
    _fails(capsys, ["engine", b, "--graph", "plugins", "--runtime", "tensorrt-rtx", "--target", "sm86"],
           "has no model.plugins.onnx", "--plugins")
    _fails(capsys, ["engine", b, "--graph", "int8", "--runtime", "tensorrt-rtx", "--target", "sm86"],
           "has no model.int8.onnx", "--precision int8 --calib DIR")
    _fails(capsys, ["engine", b, "--graph", "int4", "--runtime", "tensorrt-rtx", "--target", "sm86"], "is not one of fp32")
    _fails(capsys, ["engine", b, "--runtime", "tensorrt-rtx", "--target", "ampere"], "not a compute capability", "--target sm86")
    _fails(capsys, ["engine", b, "--runtime", "onnxruntime"], "--runtime 'onnxruntime' is not one of")
    _fails(capsys, ["verify", b, "--engine", "sm75"], "has no engine for 'sm75'", "python -m exporter engine")
    damaged = tmp_path / "damaged"  # an engine is built from the graphs that were verified, or not at all
    shutil.copytree(bundle, damaged)
    (damaged / "model.onnx").write_bytes((damaged / "model.onnx").read_bytes()[:100])
    engines = sorted(damaged.rglob("*.engine"))
    _fails(capsys, ["engine", str(damaged), "--runtime", "tensorrt-rtx", "--target", "sm86"],
           "does not match its manifest (modified since the build (sha256 differs): model.onnx)", "Copy the bundle again")
    assert sorted(damaged.rglob("*.engine")) == engines
    folder = tmp_path / "engines-folder"  # an engine folder's engine.json damaged: refused with the fix, not a traceback
    folder.mkdir()
    for text, said in [("{", "is not valid JSON"), ("[]", "holds no {graph file: engine entry} table"),
                       ('{"entries": {"model.onnx": 5}}', "holds no {graph file: engine entry} table"),
                       ('{"entries": {"model.onnx": {"engine": "model.engine"}}}', "is damaged (model.onnx lacks gpu; ")]:
        (folder / artifacts.ENGINE_JSON).write_text(text)
        with pytest.raises(ExporterError, match=re.escape(said)):
            artifacts.read_folder(folder)
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    _fails(capsys, ["engine", b], "TensorRT is not installed here", "pip install 'exporter[trt]'")


def test_graph_that_does_not_fit_its_recorded_input_is_refused_in_one_sentence(bundle, tmp_path, capsys):
    """The builder's inputs stage (`engine.network`): a manifest that records an input the graph lacks is named,
    with the graph's inputs, before any build; no plan is left behind."""
    pytest.importorskip("tensorrt_rtx")
    b = tmp_path / "b"
    shutil.copytree(bundle, b, ignore=shutil.ignore_patterns("engines"))
    manifest = json.loads((b / artifacts.MANIFEST).read_text())
    manifest["io"]["model.fp16.onnx"]["inputs"][0]["name"] = "pixels"
    (b / artifacts.MANIFEST).write_text(json.dumps(manifest))
    _fails(capsys, ["engine", str(b), "--runtime", "tensorrt-rtx", "--target", "sm86"],
           "cannot build model.fp16.onnx for the bundle's input and batch: the graph has no input 'pixels' (inputs: input)",
           "Rebuild the bundle")
    assert [p.name for p in (b / "engines" / "sm86-tensorrt-rtx").iterdir()] == []


def test_tensorrt_without_a_gpu_or_on_another_gpu(bundle, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.3.0.30"))
    monkeypatch.setattr(targets, "gpu_present", lambda: None)
    _fails(capsys, ["engine", str(bundle)], "TensorRT 10.3.0.30 builds an engine for the GPU it runs on", "--runtime tensorrt-rtx")
    monkeypatch.setattr(targets, "gpu_present", lambda: Gpu("Orin", "sm87"))
    _fails(capsys, ["engine", str(bundle), "--target", "sm90"], "--target sm90 asks for another GPU", "drop --target")


def test_rtx_target_names(bundle, capsys):
    pytest.importorskip("tensorrt_rtx")
    _fails(capsys, ["engine", str(bundle), "--runtime", "tensorrt-rtx", "--target", "sm87"],
           "cannot build for sm87 (Jetson Orin)", "sm75, sm80, sm86, sm89, sm120, sm121", "--runtime tensorrt")
    _fails(capsys, ["engine", str(bundle), "--runtime", "tensorrt-rtx"], "needs the GPU's compute capability", "Pass --target")
    assert targets.parse_target("SM_86") == targets.parse_target("8.6") == targets.parse_target("86") == "sm86"


FAKE_LIBCUDA = r"""
#include <string.h>
int cuInit(unsigned flags) { return FAIL_INIT; }
int cuDeviceGet(int *d, int ordinal) { *d = ordinal; return 0; }
int cuDeviceGetName(char *name, int len, int d) { strncpy(name, "Orin", len); return 0; }
int cuDeviceGetAttribute(int *v, int attr, int d) { *v = attr == 75 ? 8 : attr == 76 ? 7 : -1; return 0; }
"""


@pytest.mark.parametrize("fail_init", [0, 100])
def test_gpu_from_the_cuda_driver(tmp_path, fail_init):
    """The driver-API probe (for a Jetson, whose PyPI torch has no CUDA) against a stand-in libcuda."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("no C compiler for the stand-in libcuda")
    src = tmp_path / "cuda.c"
    src.write_text(FAKE_LIBCUDA.replace("FAIL_INIT", str(fail_init)))
    lib = tmp_path / "libcuda.so.1"
    subprocess.run([gcc, "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    assert targets._driver_gpu(str(lib)) == (Gpu("Orin", "sm87") if fail_init == 0 else None)
    assert targets._driver_gpu(str(tmp_path / "absent.so")) is None


def test_verify_needs_a_buffer_provider_for_the_engine(rtx_bundle, capsys, monkeypatch):
    """Pre-flight passes (right runtime, right GPU) but torch has no CUDA: refused in one sentence, not a traceback."""
    entry = _entry(rtx_bundle)
    monkeypatch.setattr(preflight, "present", lambda runtime: preflight.Present(runtime, entry["runtime_version"], Gpu("RTX 3090", "sm86")))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _fails(capsys, ["verify", str(rtx_bundle), "--engine", "sm86"], "torch has no CUDA", "CUDA build of torch")
    problem = run_module.cannot_run(dict(entry, runtime="tensorrt"))
    assert problem is None or "pip install polygraphy" in problem.fix


def test_plugin_graph_commands_load_the_library_on_both_versions():
    commands = scripts.trtexec_commands("model.plugins.onnx", "input", (3, 224, 224), (1, 8, 32), plugins=True)
    for (major, action), argv in commands.items():
        assert scripts.flag_problems(argv, major) == [], (major, action)
        assert f"--dynamicPlugins={artifacts.PLUGIN_LIBRARY}" in argv
    fixed = scripts.trtexec_commands("model.onnx", "input", (3, 224, 224), (8, 8, 8), plugins=False)
    assert not any(a.startswith(("--minShapes", "--shapes")) for argv in fixed.values() for a in argv)  # static graph


def test_report_md_answers_can_i_ship_with_an_engine_that_failed():
    from reports import report

    from exporter.checks.parity import StoredComparison, compare
    from exporter.verify.engines import EngineRow

    rng = np.random.default_rng(1)
    ref = rng.normal(size=(4, 10)).astype(np.float32)
    ran = compare(ref, ref, "model.fp16.onnx", "fp16", 2)
    good = StoredComparison(**vars(compare(ref, ref, "model.fp16.onnx", "fp16", 2)), runtime="onnxruntime (CPU)")
    bad = StoredComparison(**vars(compare(ref, -ref, "model.fp16.engine", "fp16", 2)),
                           runtime="TensorRT 10.3.0.30 (Orin, Polygraphy TrtRunner)", left_out=1)
    engine_row = EngineRow(folder="sm87-tensorrt", engine="model.fp16.engine", graph="model.fp16.onnx", runtime="tensorrt",
                           runtime_version="10.3.0.30", target="sm87", gpu="Orin", build_seconds=61.0, bytes=12_000_000,
                           status="failed", comparisons=[bad])
    r = report(spec={"method": "tome", "precision": "fp16"}, schedule=[10, 8], comparisons=[ran], references=[good],
               engines=[engine_row])
    md = r.markdown()
    assert not r.passed and r.failures()[0].startswith("engines/sm87-tensorrt/model.fp16.engine at batch 2: min cosine")
    assert "Do not ship" in md and "Engines checked on their GPU: sm87-tensorrt/model.fp16.engine failed." in md
    assert "| TensorRT 10.3.0.30 (Orin, Polygraphy TrtRunner) | model.fp16.engine | 2 | 4 |" in md
    assert "| 1 | FAIL: min cosine similarity" in md
    assert "| engines/sm87-tensorrt/model.fp16.engine | TensorRT 10.3.0.30 | sm87 | Orin | 61.0s | 12.0 MB | failed |" in md
    assert Report.from_dict(json.loads(json.dumps(r.to_dict()))) == r  # report.json holds the whole report


class FakeTensorRT(types.ModuleType):
    """The slice of TensorRT 10's Python API that exporter.engine.network calls, recording the calls, so the
    TensorRT path's use of it (strongly typed, profile, timing cache, plugin library, no RTX target) is
    checked without TensorRT. It proves our calls, not TensorRT's behaviour."""

    def __init__(self):
        super().__init__("tensorrt")
        self.__version__ = "10.3.0.30"
        self.calls = []
        calls = self.calls

        class ILogger:
            Severity = types.SimpleNamespace(ERROR=1, INTERNAL_ERROR=0)

            def __init__(self):
                pass

        class Obj:
            def __init__(self, name):
                self._name = name

            def __getattr__(self, attr):
                def call(*args):
                    calls.append((f"{self._name}.{attr}", args))
                    return {"load_library": object(), "set_timing_cache": True, "create_timing_cache": ("cache", args[0] if args else b"")}.get(attr, Obj(attr))
                return call

        class Network(Obj):  # seven fp16 layers, the fp16 graph's input and output with a dynamic batch
            num_layers, num_inputs, num_outputs = 7, 1, 1

            def get_layer(self, i):
                return types.SimpleNamespace(type=types.SimpleNamespace(name="CONVOLUTION"), num_outputs=1,
                                             get_output_type=lambda j: types.SimpleNamespace(name="HALF"))

            def get_input(self, i):
                return types.SimpleNamespace(name="input", shape=(-1, 3, 64, 64))

            def get_output(self, i):
                return types.SimpleNamespace(name="logits", shape=(-1, 10), dtype=types.SimpleNamespace(name="FLOAT"))

        class Builder(Obj):
            def __init__(self, logger):
                super().__init__("builder")

            def create_network(self, flags):
                calls.append(("builder.create_network", (flags,)))
                return Network("network")

            def build_serialized_network(self, network, config):
                calls.append(("builder.build_serialized_network", ()))
                return b"PLAN"

        class Config(Obj):
            def get_timing_cache(self):
                return types.SimpleNamespace(serialize=lambda: b"TACTICS")

        class Parser:
            def __init__(self, network, logger):
                pass

            def parse_from_file(self, path):
                calls.append(("parser.parse_from_file", (Path(path).name,)))
                return True

        Builder.create_builder_config = lambda self: Config("config")
        self.ILogger, self.Builder, self.OnnxParser = ILogger, Builder, Parser
        self.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1)
        self.LayerType = types.SimpleNamespace(PLUGIN_V3="PLUGIN_V3")


def test_tensorrt_build_path_with_a_recording_stand_in(bundle, tmp_path, monkeypatch, capsys):
    copy_ = tmp_path / "b"
    shutil.copytree(bundle, copy_, ignore=shutil.ignore_patterns("engines"))
    fake = FakeTensorRT()
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(targets, "gpu_present", lambda: Gpu("Orin", "sm87"))
    assert main(["engine", str(copy_)]) == 0
    names = [c[0] for c in fake.calls]
    assert ("builder.create_network", (2,)) in fake.calls  # 1 << STRONGLY_TYPED
    assert ("parser.parse_from_file", ("model.fp16.onnx",)) in fake.calls
    shapes = [c[1] for c in fake.calls if c[0] == "create_optimization_profile.set_shape"]
    assert shapes == [("input", (1, 3, 64, 64), (2, 3, 64, 64), (4, 3, 64, 64))]
    assert "config.add_optimization_profile" in names and not any("compute_capability" in n for n in names)
    assert ("config.create_timing_cache", (b"",)) in fake.calls
    folder = copy_ / "engines" / "sm87-tensorrt"
    assert (folder / "model.fp16.engine").read_bytes() == b"PLAN" and (folder / "timing.cache").read_bytes() == b"TACTICS"
    entry = artifacts.read_folder(folder)["entries"]["model.fp16.onnx"]
    assert (entry["runtime"], entry["runtime_version"], entry["target"], entry["gpu"]) == ("tensorrt", "10.3.0.30", "sm87", "Orin")
    assert entry["flags"] == ["STRONGLY_TYPED"] and entry["timing_cache"] == "new"
    preflight.check(copy_, "sm87-tensorrt", entry, preflight.Present("tensorrt", "10.3.0.30", Gpu("Orin", "sm87")))
    capsys.readouterr()
    assert main(["engine", str(copy_), "--target", "sm87"]) == 0 and "cache hit" in capsys.readouterr().err
    fake.calls.clear()
    assert main(["engine", str(copy_), "--graph", "fp32"]) == 0
    assert ("config.create_timing_cache", (b"TACTICS",)) in fake.calls  # the folder's timing cache is reused
    assert artifacts.read_folder(folder)["entries"]["model.onnx"]["timing_cache"] == "reused"
    # the plugin graph loads the bundle's library into the builder's registry before parsing
    (copy_ / "model.plugins.onnx").write_bytes((copy_ / "model.fp16.onnx").read_bytes())
    (copy_ / "plugins").mkdir()
    (copy_ / artifacts.PLUGIN_LIBRARY).write_bytes(b"\x7fELF stand-in")
    for name in ("model.plugins.onnx", artifacts.PLUGIN_LIBRARY):
        _rehash(copy_, name)
    manifest = json.loads((copy_ / artifacts.MANIFEST).read_text())  # a plugin build records the graph's I/O too
    manifest["io"]["model.plugins.onnx"] = manifest["io"]["model.fp16.onnx"]
    (copy_ / artifacts.MANIFEST).write_text(json.dumps(manifest))
    fake.calls.clear()
    assert main(["engine", str(copy_), "--graph", "plugins", "--trust-plugins"]) == 0
    names = [c[0] for c in fake.calls]
    assert names.index("get_plugin_registry.load_library") < names.index("parser.parse_from_file")
    assert Path(fake.calls[names.index("get_plugin_registry.load_library")][1][0]) == copy_ / artifacts.PLUGIN_LIBRARY
    plugin_entry = artifacts.read_folder(folder)["entries"]["model.plugins.onnx"]
    assert plugin_entry["key_fields"]["plugin_sha256"] == artifacts.sha256(copy_ / artifacts.PLUGIN_LIBRARY)
