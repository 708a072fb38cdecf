# SPDX-License-Identifier: Apache-2.0
"""The benchmarks: which ONNX nodes count as token-selection code, the table, and the GPU script without a GPU."""
import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import timm
import torch

from exporter.bench import profile as profile_module
from exporter.bench import throughput, timing
from exporter.errors import ExporterError
from exporter.bench.profile import _node_medians, _origins, overhead_nodes, profile_overheads
from exporter.cli import main
from exporter.export.onnx_export import export_onnx
from exporter.methods import apply_method


def _namespace(node: onnx.NodeProto) -> str:
    return next((p.value for p in node.metadata_props if p.key == "namespace"), "")


@pytest.fixture(scope="module")
def tome_graph(tmp_path_factory):
    torch.manual_seed(0)
    model = apply_method(timm.create_model("test_vit").eval(), "tome", r=8)
    path = export_onnx(model, tmp_path_factory.mktemp("bench") / "tome.onnx", 160, (2, 2, 2))
    return path, onnx.load(str(path), load_external_data=False)


def _path(node: onnx.NodeProto) -> list:
    return ast.literal_eval(next(p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"))


def test_machinery_is_the_method_code_only(tome_graph):
    _, graph = tome_graph
    kinds = overhead_nodes(graph)
    chosen, bias = kinds["machinery"], kinds["size bias"]
    by_name = {n.name: n for n in graph.graph.node}
    ops = {by_name[name].op_type for name in chosen}
    # the selection itself: scores, TopK, gathers, one-hot merge, and the method's own layout ops
    assert {"TopK", "Gather", "MatMul", "Equal", "ReduceMean", "Transpose"} <= ops
    for node in graph.graph.node:
        ns = _namespace(node)
        if "blocks." in ns or "patch_embed" in ns:  # timm's own modules never count
            assert node.name not in chosen | bias, ns
    # the attention the reduced model re-implements (qkv reshape, permute, unbind, scaled dot product,
    # output transpose) is the model's: 6 blocks, each with its Softmax and output reshape
    softmax = [n for n in graph.graph.node if n.op_type == "Softmax" and n.name not in chosen]
    assert len(softmax) == 6 and not {n.name for n in softmax} & bias
    adds = [n for n in graph.graph.node if n.op_type == "Add" and len(_path(n)) == 2]
    inside = {out for n in graph.graph.node if len(_path(n)) > 2 for out in n.output}
    residual = [n for n in adds if any(i in inside for i in n.input)]
    # two residual adds per block, never counted
    assert len(residual) == 2 * 6 and not {n.name for n in residual} & (chosen | bias)
    # every merging block sums its sources into their partners (a top-level MatMul and Add) and appends the
    # merged tokens to the block's tokens (a Concat reading a residual add): counted, though the Concat
    # reads the model's tokens
    producer = {out: n for n in graph.graph.node for out in n.output}
    merge = [n for n in adds if any(i in producer and producer[i].op_type == "MatMul" and producer[i].name in chosen
                                    for i in n.input)]
    residual_out = {out for n in residual for out in n.output}
    append = [n for n in graph.graph.node if n.op_type == "Concat" and set(n.input) & residual_out]
    assert len(merge) == len(append) == 6 and {n.name for n in merge + append} <= chosen
    # proportional attention: each block after the first merge adds +log(size) to its attention logits
    assert len(bias) == 5 and {by_name[name].op_type for name in bias} == {"Add"}


def test_profile_shares_are_the_profiled_time_of_each_kind(tome_graph, monkeypatch):
    """Each share is the node time charged to that kind's exported nodes over all node time. Checked with
    given node times (every node that ran: 10 µs, less a 2 µs profiler cost), so the expected shares are
    node counts and the test does not depend on how busy the machine is."""
    path, graph = tome_graph
    x = np.random.default_rng(0).standard_normal((2, 3, 160, 160), dtype=np.float32)
    medians, optimized = _node_medians(path, x, threads=1, runs=1)
    origin = _origins(optimized, graph)
    kinds = overhead_nodes(graph)
    monkeypatch.setattr(profile_module, "_node_medians", lambda *args: ({name: 10.0 for name in medians}, optimized))
    monkeypatch.setattr(profile_module, "profiler_cost", lambda threads: 2.0)
    profile = profile_overheads(path, x, threads=1, sessions=2, runs=1)
    for kind, names in kinds.items():
        expected = sum(origin.get(name) in names for name in medians) / len(medians)
        assert profile.shares[kind] == pytest.approx(expected) and 0.0 < expected < 1.0, kind
    assert profile.node_ms == pytest.approx(8.0 * len(medians) / 1000) and profile.profiler_us == 2.0


def test_profile_shares_are_fractions(tome_graph):
    """A real profiled run: whatever the machine's load, shares are fractions of the node time."""
    path, _ = tome_graph
    x = np.random.default_rng(0).standard_normal((2, 3, 160, 160), dtype=np.float32)
    profile = profile_overheads(path, x, threads=1, sessions=1, runs=2)
    assert set(profile.shares) == {"machinery", "size bias"}
    assert all(0.0 <= share <= 1.0 for share in profile.shares.values()) and sum(profile.shares.values()) <= 1.0
    assert profile.node_ms >= 0 and profile.profiler_us >= 0


def test_the_profilers_own_cost_is_taken_off_every_node(tome_graph, monkeypatch):
    """A node's recorded time less the calibrated profiler cost, never below zero: with a cost larger
    than any node, nothing is left to share out."""
    path, _ = tome_graph
    x = np.random.default_rng(0).standard_normal((2, 3, 160, 160), dtype=np.float32)
    monkeypatch.setattr(profile_module, "profiler_cost", lambda threads: 1e9)
    profile = profile_overheads(path, x, threads=1, sessions=1, runs=1)
    assert profile.node_ms == 0 and profile.profiler_us == 1e9
    assert profile.shares == {"machinery": 0.0, "size bias": 0.0}


def test_profiler_cost_is_what_a_no_op_node_records():
    """Calibrated on no-op nodes: positive, and far below a real kernel's time (tens of µs at most)."""
    cost = profile_module.profiler_cost(threads=1, nodes=50, runs=5)
    assert 0.0 < cost < 100.0


def test_optimised_nodes_trace_back_to_exported_ones(tome_graph):
    """onnxruntime fuses (a Transpose into a MatMul) and inserts nodes; every node it ran must be charged to
    an exported node, or its time would be silently left out of the shares."""
    path, graph = tome_graph
    x = np.random.default_rng(0).standard_normal((2, 3, 160, 160), dtype=np.float32)
    medians, optimized = _node_medians(path, x, threads=1, runs=1)
    origins = _origins(optimized, graph)
    exported = {n.name for n in graph.graph.node}
    assert set(medians) <= set(origins) and set(origins.values()) <= exported
    assert any(n.op_type == "FusedMatMul" for n in optimized.graph.node)  # the fusion really happened


def test_table_reports_medians_of_per_round_ratios_and_their_range():
    from exporter.bench.profile import Profile
    from exporter.bench.throughput import Candidate, profile_note, table

    dense = Candidate("none", "none", {}, None, gmacs=4.0, schedule=None, ort_ms=[100.0, 120.0, 90.0], torch_ms=[80.0] * 3)
    tome = Candidate("tome r=13", "tome", {}, None, gmacs=2.0, schedule=[1], ort_ms=[50.0, 80.0, 60.0], torch_ms=[60.0] * 3,
                     profile=Profile({"machinery": 0.054, "size bias": 0.0}, node_ms=57.0, profiler_us=9.0))
    row = table([dense, tome], batch=8).splitlines()[-1].split(" | ")
    # per-round speedups 2.0, 1.5, 1.5: median 1.5 (not 100/60 from the median times), range 1.50-2.00
    assert row[5] == "1.50x (1.50–2.00)" and row[6] == "0.75"
    assert row[7:9] == ["5.4%", "—"]  # no size bias: a dash, not 0.0%
    assert "9.0–9.0 µs" in profile_note([dense, tome]) and "95%" in profile_note([dense, tome])  # 57 of 60 ms


def test_gpu_bench_without_a_gpu_says_where_to_run_it():
    """The GPU benchmark on a machine without one: exit 2 and a message naming the fix, not a traceback."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_torch_bench.py"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "No CUDA GPU" in done.stderr and "exporter bench" in done.stderr
    assert "Traceback" not in done.stderr


def test_each_runtime_is_timed_in_a_process_of_its_own(tome_graph):
    """onnxruntime and PyTorch never share a process (or the parent's): each has its own thread pool, and
    onnxruntime's threads do not spin after a run, so a runtime waiting for its turn leaves the cores alone."""
    path, _ = tome_graph
    x = np.random.default_rng(0).standard_normal((2, 3, 160, 160), dtype=np.float32)
    assert timing.timing_options(2).get_session_config_entry("session.intra_op.allow_spinning") == "0"
    torch.manual_seed(0)
    model = timm.create_model("test_vit").eval()
    with timing.Runtime("ort", {"a": path}, x, 1) as ort_rt, \
            timing.Runtime("torch", {"a": model}, x, 1) as torch_rt:
        assert len({os.getpid(), ort_rt.pid, torch_rt.pid}) == 3
        assert ort_rt.time("a", 2) > 0 and torch_rt.time("a", 1) > 0
        with pytest.raises(RuntimeError, match="KeyError"):
            ort_rt.time("missing", 1)


def test_bench_run_leaves_the_callers_torch_alone_and_checks_a_lone_run():
    """`run` does not change the caller's torch threads or RNG, and times the first row once more alone."""
    torch.manual_seed(0)
    dense = timm.create_model("test_vit").eval()
    threads, state = torch.get_num_threads(), torch.get_rng_state()
    torch.set_num_threads(1)
    try:
        cands = throughput.run({"test_vit": dense}, ["none"], (160, 160), batch=1, threads=2, rounds=2, iterations=1,
                               log=lambda _: None)
        assert torch.get_num_threads() == 1 and torch.equal(torch.get_rng_state(), state)
    finally:
        torch.set_num_threads(threads)
    (first,) = cands
    assert len(first.ort_ms) == len(first.torch_ms) == len(first.ort_alone_ms) == len(first.torch_alone_ms) == 2
    note = throughput.lone_note(cands)
    assert note.startswith("none timed alone in a fresh process: onnxruntime ") and "PyTorch" in note


def test_models_list_with_variants():
    text = "deit_small_patch16_224, litv2_small(alpha=0.0),litv2_small(local_ws=(0, 0, 1, 1))"
    assert throughput.parse_models(text) == {
        "deit_small_patch16_224": ("deit_small_patch16_224", {}),
        "litv2_small(alpha=0.0)": ("litv2_small", {"alpha": 0.0}),
        "litv2_small(local_ws=(0, 0, 1, 1))": ("litv2_small", {"local_ws": (0, 0, 1, 1)}),
    }
    with pytest.raises(ExporterError, match="neither a model name"):
        throughput.parse_models("litv2_small(alpha=os.system)")


def test_one_table_for_every_runtime():
    """The GPU script's table (PyTorch times only, no profile) comes from the same printer, with its columns."""
    from exporter.bench.throughput import Candidate, table

    dense = Candidate("none", "none", {}, None, gmacs=4.0, schedule=None, torch_ms=[2.0, 4.0])
    tome = Candidate("tome", "tome", {}, None, gmacs=2.0, schedule=[1], torch_ms=[1.0, 2.5])
    lines = table([dense, tome], batch=64).splitlines()
    assert lines[0] == ("| method | GMACs | FLOPs ratio | PyTorch ms/batch | PyTorch img/s | measured speedup "
                        "| speedup / FLOPs ratio |")
    assert lines[-1] == "| tome | 2.00 | 2.00x | 1.75 | 36571.4 | 1.80x (1.60–2.00) | 0.90 |"


# ---- bench BUNDLE...: every runtime of built bundles, written into them ---------------------------------------------

def _build(out, *extra):
    assert main(["build", "--model", "test_vit", "--weights", "random", "--batch", "1:2:4", "--out", str(out), *extra]) == 0
    (bundle,) = [p for p in out.iterdir() if not p.name.startswith(".")]
    return bundle


@pytest.fixture(scope="module")
def bench_bundles(tmp_path_factory):
    """A dense and a ToMe plugin bundle of timm's test_vit (random weights, batch 1:2:4), the dense one with an
    engine recorded for an RTX GPU (its plan absent: it cannot run anywhere, and bench must say so)."""
    root = tmp_path_factory.mktemp("bench-bundles")
    dense = _build(root / "dense")
    reduced = _build(root / "tome", "--method", "tome", "--plugins")
    engine = {"engine": "model.engine", "graph": "model.onnx", "runtime": "tensorrt-rtx", "runtime_version": "1.7.1",
              "target": "sm86", "sha256": "0" * 64, "key": "0" * 64, "key_fields": {"graph_sha256": "0" * 64}, "gpu": None, "flags": [],
              "build_seconds": 1.0, "bytes": 1000}
    folder = dense / "engines" / "sm86-tensorrt-rtx"
    folder.mkdir(parents=True)
    (folder / "engine.json").write_text(json.dumps({"entries": {"model.onnx": engine}}))
    return dense, reduced


@pytest.fixture(scope="module")
def benched(bench_bundles):
    """`bench` on both bundles, one round of one batch: what it printed and wrote."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["bench", *map(str, bench_bundles), "--rounds", "1", "--iterations", "1", "--threads", "1"])
    assert code == 0
    return out.getvalue(), json.loads((bench_bundles[1] / "bench" / "bench.json").read_text())


def test_bench_writes_every_runtime_and_batch_into_each_bundle(bench_bundles, benched):
    stdout, data = benched
    dense, reduced = bench_bundles
    for bundle in (dense, reduced):
        files = {p.name: p.read_bytes() for p in (bundle / "bench").iterdir()}
        assert sorted(files) == ["bench.json", "bench.md", "bench.png"]  # no temp file left
        assert json.loads(files["bench.json"]) == data and files["bench.png"].startswith(b"\x89PNG\r\n\x1a\n")
    assert data["settings"]["batches"] == [1, 2, 4] and data["settings"]["input"] == [3, 160, 160]
    labels = [b["label"] for b in data["bundles"]]
    assert labels[0] == "none" and labels[1].startswith("tome ") and data["bundles"][1]["baseline"] == "none"
    rows = {(r["bundle"], r["runtime"], r["batch"]): r for r in data["rows"]}
    plugin = "onnxruntime CPU fp32 plugin graph"
    expected = {(label, runtime, batch) for batch in (1, 2, 4) for label in labels
                for runtime in ("onnxruntime CPU fp32", "PyTorch eager CPU fp32")}
    expected |= {(labels[1], plugin, batch) for batch in (1, 2, 4)}
    assert set(rows) == expected
    flops = json.loads((reduced / "manifest.json").read_text())["flops"]["ratio"]
    for (label, runtime, batch), r in rows.items():
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] and r["calls"] == 1 and r["cv"] is None
        assert r["images_per_s"] == pytest.approx(batch * 1000 / r["p50_ms"])
        compared = label == labels[1] and runtime != plugin  # the plugin graph's time is the Python reference's
        assert (r["speedup"] is not None) == compared and r["reference_ops"] == (runtime == plugin)
        if compared:
            base = rows[labels[0], runtime, batch]
            assert r["speedup"] == pytest.approx(base["p50_ms"] / r["p50_ms"]) and r["flops_ratio"] == flops
    machine = data["machine"]
    assert machine["threads"] == 1 and machine["cores"] >= 1 and machine["torch"] and machine["onnxruntime"]
    assert machine["cpu"] and machine["os"] and machine["python"]
    (skipped,) = data["skipped"]
    assert skipped["bundle"] == "none" and skipped["engine"] == "engines/sm86-tensorrt-rtx/model.engine"
    assert "missing or differs from its manifest" in skipped["reason"]
    assert len(data["alone"]) == 2  # onnxruntime's and PyTorch's process, each timed alone once
    md = (reduced / "bench" / "bench.md").read_text()
    assert md in stdout and "plugin graph †" in md and "not a deployment number" in md
    assert "Skipped TensorRT-RTX 1.7.1 sm86 fp32 on none" in md


def test_verify_still_passes_after_a_bench_and_reports_its_throughput(bench_bundles, benched, capsys):
    for bundle in bench_bundles:
        capsys.readouterr()
        assert main(["verify", str(bundle), "--references-only"]) == 0, capsys.readouterr()
        md = capsys.readouterr().out  # the report, on stdout
        throughput = md.split("## Throughput")[1].split("## Skipped")[0]
        assert "Measured by `python -m exporter bench` on " in throughput
        assert "| none | onnxruntime CPU fp32 | 2 |" in throughput and "| PyTorch eager CPU fp32 | 4 |" in throughput
    assert "Not measured yet" in (bench_bundles[0] / "report.md").read_text()  # build's own report predates the bench


@pytest.fixture
def dense_copy(bench_bundles, tmp_path):
    dst = tmp_path / bench_bundles[0].name
    shutil.copytree(bench_bundles[0], dst, ignore=shutil.ignore_patterns("bench", "engines"))
    return dst


def _refused(capsys, *args) -> str:
    assert main(["bench", *map(str, args)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "fix:" in err and "Traceback" not in err
    return err


def test_bad_bundles_are_refused_before_any_timing(bench_bundles, dense_copy, tmp_path, capsys):
    assert "is not a bundle (no manifest.json)" in _refused(capsys, tmp_path)
    assert "is given twice" in _refused(capsys, dense_copy, dense_copy)
    err = _refused(capsys, dense_copy, "--batch", "2,8")
    assert "--batch 8:" in err and "takes batches 1..4 (built with --batch 1:2:4)" in err and "from 1 to 4" in err
    assert "not both" in _refused(capsys, dense_copy, "--models", "test_vit")
    assert "not both" in _refused(capsys, dense_copy, "--methods", "tome")
    assert "comma-separated list" in _refused(capsys, dense_copy, "--batch", "1,x")
    assert "bench --models times one batch size" in _refused(capsys, "--models", "test_vit", "--batch", "1,2")
    (dense_copy / "bench").write_text("in the way")
    assert "is a file, where bench writes its results" in _refused(capsys, dense_copy)
    (dense_copy / "bench").unlink()
    (dense_copy / "reproduce.sh").write_text("edited")
    assert "does not match its manifest (modified since the build (sha256 differs): reproduce.sh)" in _refused(
        capsys, dense_copy)
    (dense_copy / "model.onnx").unlink()
    assert "does not match its manifest (missing from the bundle: model.onnx" in _refused(capsys, dense_copy)
    assert not (dense_copy / "bench").exists()


def test_bundles_of_different_input_sizes_are_refused(dense_copy, tmp_path, capsys):
    other = _build(tmp_path / "small", "--img-size", "96")
    err = _refused(capsys, dense_copy, other)
    assert "take different inputs" in err and "3x160x160" in err and "3x96x96" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_an_unwritable_bundle_is_refused(dense_copy, capsys):
    dense_copy.chmod(0o500)
    try:
        assert "Cannot write" in _refused(capsys, dense_copy)
    finally:
        dense_copy.chmod(0o700)


def test_rows_summarise_every_call_and_speedups_use_per_round_ratios():
    from exporter.bench import plot, results

    dense = results.Row("none", "onnxruntime CPU fp32", 4, [[10.0, 10.0, 10.0], [20.0, 20.0, 20.0]])
    tome = results.Row("tome", "onnxruntime CPU fp32", 4, [[5.0, 5.0, 6.0], [8.0, 10.0, 30.0]],
                       baseline=("none", "x"), flops_ratio=1.5)
    row = results.summarise(tome, dense)
    assert row["p50_ms"] == 7.0 and row["images_per_s"] == pytest.approx(4000 / 7.0)
    # per round, the ratio of medians: 10/5 and 20/10 (the 30 ms call the machine interrupted does not count)
    assert row["speedup"] == pytest.approx(2.0) and row["speedup_range"] == [2.0, 2.0]
    calls = [5, 5, 6, 8, 10, 30]
    assert row["cv"] == pytest.approx(np.std(calls, ddof=1) / np.mean(calls)) and row["cv_high"]
    assert results.summarise(dense, None)["speedup"] is None
    data = {"machine": {"cpu": "c", "cores": 2, "threads": 2, "os": "o", "python": "3", "torch": "2", "gpu": None},
            "settings": {"batches": [4], "input": [3, 8, 8], "rounds": 2, "iterations": 2, "cv_limit": results.CV_LIMIT},
            "bundles": [{"label": "tome", "run_name": "r", "model": "m", "flops": None, "baseline": None}],
            "rows": [results.summarise(tome, None)], "skipped": [], "alone": []}
    md = results.markdown(data)
    assert "2.00x" not in md and "No speedups" in md and "⚠ 1 of 1 rows vary" in md
    assert plot.figure(data).axes[1].texts  # the speedup panel says why it is empty


def test_cpu_model_from_cpuinfo(tmp_path):
    from exporter.bench.machine import cpu_model

    (tmp_path / "x86").write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n")
    (tmp_path / "arm").write_text("processor\t: 0\nBogoMIPS\t: 62.50\n\nModel\t: NVIDIA Jetson AGX Orin\n")
    assert cpu_model(tmp_path / "x86") == "AMD EPYC 7B13" and cpu_model(tmp_path / "arm") == "NVIDIA Jetson AGX Orin"
    assert cpu_model(tmp_path / "missing")  # the platform's name instead


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_pytorch_fp16_and_cuda_graphs_are_timed_on_the_gpu():
    torch.manual_seed(0)
    model = timm.create_model("test_vit").eval()
    x = np.random.default_rng(0).standard_normal((4, 3, 160, 160), dtype=np.float32)
    for kind in ("torch-cuda-fp16", "torch-cuda-graph-fp16"):
        with timing.Runtime(kind, {"a": model}, x, 1) as rt:
            assert len(rt.latencies("a", 3, batch=2)) == 3 and rt.time("a", 2, batch=4) > 0
