# SPDX-License-Identifier: Apache-2.0
"""exporter.ops.perf: the time model's arithmetic, and one whole estimate (the trained-fixture ViT's shapes,
ToMe) run as the command runs it: meta recording, interpreter trace, compiled variants read."""
import functools
import json

import pytest

from exporter.cli import main
from exporter.commands import perf as perf_command
from exporter.methods.flops import count_gmacs
from exporter.ops import cubin, perf

H100 = perf.GPUS["sm_90"]


def test_standard_op_time_model():
    m = perf.Model(gemm_efficiency=0.5, attention_efficiency=0.25)
    gemm = perf.Cost("gemm", "addmm", flops=989.4e12 * 0.5 * 1e-6, bytes=0)  # one microsecond of half the peak
    assert perf.time_us(gemm, H100, m, fp16=True) == pytest.approx(1.0)
    assert perf.time_us(perf.Cost("gemm", "mm", flops=1, bytes=3350e3), H100, m, True) == pytest.approx(1.0)  # memory-bound
    attn = perf.Cost("attention", "sdpa", flops=989.4e12 * 0.25 * 2e-6, bytes=0)
    assert perf.time_us(attn, H100, m, True) == pytest.approx(2.0)
    assert perf.time_us(perf.Cost("memory", "add", bytes=2 * 3350e3), H100, m, True) == pytest.approx(2.0)
    assert perf.time_us(gemm, H100, m, fp16=False) == pytest.approx(989.4 / 66.9)  # fp32: CUDA cores


def test_issue_bound_waves():
    facts = cubin.KernelFacts("k", "sm_90a", 255, 0, 0, 1024, ())
    v = cubin.Variant(("k",), 8, 2048, facts)
    occ = cubin.occupancy(v)
    assert occ.blocks_per_sm == 1
    # 264 programs of 8 warps, 1000 warp-instructions each, one block an SM: two waves of 1000 / 4 clocks...
    per_program = 8 * 1000
    assert perf.issue_us(v, occ, per_program, 264, H100) == pytest.approx(2 * per_program / 4 / 1980)
    # ...one wave when the grid fits the SMs; a lone 1-warp block issues one instruction a clock
    assert perf.issue_us(v, occ, per_program, 132, H100) == pytest.approx(per_program / 4 / 1980)
    one = cubin.Variant(("k",), 1, 0, facts)
    assert perf.issue_us(one, cubin.occupancy(one), 1000, 1, H100) == pytest.approx(1000 / 1980)


@pytest.fixture(scope="module")
def tome():
    build = functools.partial(perf_command.models, "vit_digits", "tome", {"r": 4}, None)
    dense, reduced = build()
    about = {"model": "vit_digits", "method": "tome", "params": reduced.params, "schedule": reduced.schedule, "depth": 12}
    gmacs = (count_gmacs(dense, (32, 32)), count_gmacs(reduced, (32, 32)))
    analysis = perf.analyse(build, about, (32, 32), gmacs, arch="sm_90", jobs=2)
    return perf.estimate(analysis, batch=8)


def test_estimate_of_a_reduced_model(tome):
    from exporter.methods import apply_method
    from exporter.models import create_model

    schedule = apply_method(create_model("vit_digits", "random", 0), "tome", r=4).schedule
    assert tome["schedule"] == schedule and "not a measurement" in tome["estimate"]
    assert [tuple(r["tokens"]) for r in tome["ops"]] == list(zip([65] + schedule[:-1], schedule))
    for row in tome["ops"]:
        assert row["op"] == "tome_merge" and row["kernels"]
        assert row["estimate_us"] == max(row["memory_us"], row["issue_us"]) > 0 and row["standard_us"] > 0
        for k in row["kernels"]:
            assert k["registers"] > 0 and k["programs"] % 8 == 0 and k["waves"] >= 1
            assert k["variant"][-1] == 90
        # the op's loops ran more than once (the traced lines were found in the cubins' line tables)
        assert any(k["instructions_per_program"] > k["instructions"] for k in row["kernels"])
    assert tome["speedup"] == pytest.approx(tome["dense_us"] / tome["reduced_us"])
    assert tome["flops_ratio"] > 1 and tome["dense_us"] > 0


def test_command_json_and_bad_input(capsys):
    assert main(["perf", "--model", "vit_digits", "--method", "evit", "--batch", "4,16", "--json", "--jobs", "2"]) == 0
    small, large = json.loads(capsys.readouterr().out)
    assert small["method"] == "evit" and small["ops"] and small["gpu"]["name"] == "H100 SXM5"
    assert (small["batch"], large["batch"]) == (4, 16) and small["flops_ratio"] == large["flops_ratio"]
    for a, b in zip(small["ops"], large["ops"]):  # 4x the images: 4x the programs and bytes
        assert [4 * k["programs"] for k in a["kernels"]] == [k["programs"] for k in b["kernels"]]
        assert b["memory_us"] == pytest.approx(4 * a["memory_us"])
    assert large["dense_us"] > small["dense_us"]
    assert main(["perf", "--batch", "0"]) == 2 and main(["perf", "--batch", "a"]) == 2
    assert main(["perf", "--method", "nope"]) == 2
    assert "Unknown method" in capsys.readouterr().err


def _ops_bench():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_ops_bench.py"
    spec = importlib.util.spec_from_file_location("gpu_ops_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_ops_bench_reads_estimates_and_fails_mismatches(tmp_path):
    import torch

    bench = _ops_bench()
    rows = [{"op": "topk_prune", "tokens": [197, 140], "estimate_us": 1.0, "standard_us": 2.0}]
    (tmp_path / "estimate.evit.json").write_text(json.dumps([{"batch": 64, "ops": rows}, {"batch": 256, "ops": []}]))
    (tmp_path / "estimate.tome.json").write_text(json.dumps({"batch": 64, "ops": rows}))
    assert bench.estimates(tmp_path, "evit", 64) == rows and bench.estimates(tmp_path, "evit", 256) == []
    assert bench.estimates(tmp_path, "tome", 64) == rows and bench.estimates(tmp_path, "evovit", 64) == []
    assert bench.estimates(None, "evit", 64) == []
    x, idx = torch.ones(2, 3, dtype=torch.float16), torch.arange(4)
    assert bench.mismatch((x, idx), (x + 1e-3, idx.clone()), torch.float16) == ""
    assert "indices differ" in bench.mismatch((x, idx), (x, idx.flip(0)), torch.float16)
    assert "max |difference|" in bench.mismatch((x, idx), (x + 1, idx), torch.float16)
    assert "shape" in bench.mismatch(x, x[:1], torch.float16)


def test_dynamic_instructions_follow_the_sass_loops():
    """A loop body line that ran 10 times a program: its instructions inside the SASS loop count 10, a copy
    hoisted before the loop (same line) once, the loop's own branch 10; lines that never ran count once."""
    I = cubin.Instruction
    sass = (I(0x00, "IMAD", "R0"), I(0x10, "IADD3", "R1"),  # prologue; 0x10 hoisted from the body's line
            I(0x20, "FFMA", "R2"), I(0x30, "LDG.E.128", "R4"), I(0x40, "BRA", "0x20"),  # the loop
            I(0x50, "EXIT", ""), I(0x60, "BRA", "0x60"))  # and the padding branch (not issued)
    body, head = ("/a/_triton.py", 12), ("/a/_triton.py", 11)
    sources = {0x00: (("/b/_triton.py", 10),), 0x10: (body,), 0x20: (body,), 0x30: (body,), 0x40: (head,),
               0x50: (("/b/_triton.py", 99),)}
    facts = cubin.KernelFacts("k", "sm_90a", 32, 0, 0, 0, sass)
    v = cubin.Variant(("k",), 4, 0, facts, sources=sources)
    launch = perf.Launch("k", programs=2, constexprs={}, hits={(("/x/_triton.py", 10),): 2, (body,): 20, (head,): 22})
    # 0x00: 1, 0x10: hoisted min(10, 1) = 1, 0x20/0x30: 10 each, 0x40: min(11, 11), 0x50: never ran: 1
    assert perf.dynamic_instructions(v, launch) == pytest.approx(1 + 1 + 10 + 10 + 11 + 1)
