# SPDX-License-Identifier: Apache-2.0
"""Latency as DiffRate's search cost (`methods.latency_cost`, `bench.block_latency`, `search --target-latency-ms`).

No timed assertion: the fit and the plumbing are tested on fake timing tables; the one measurement here checks that
the block graphs export and run and fill the table, not what they measure. What a latency-targeted search reaches
against `bench` is measured in docs/search.md.
"""
import json

import numpy as np
import pytest
import torch

from exporter.cli import main
from exporter.fixtures import digits
from exporter.methods.diffrate_search import SearchViT
from exporter.methods.latency_cost import (
    LatencyTable,
    blocks_ms,
    latency_cost,
    monotone_fit,
    polynomial,
    whole_fit,
)
from exporter.models import create_model

pytestmark = pytest.mark.usefixtures("single_thread")

GRID = [2, 10, 18, 26, 34, 41, 49, 57, 65]


def _table(attention, mlp, outside=0.2) -> LatencyTable:
    return LatencyTable("onnxruntime", 8, 2, GRID, list(attention), list(mlp), outside, 0.005, 1, 1,
                        {"cpu": "fake"}).fitted()


def test_fit_recovers_a_quadratic_and_stays_monotone_on_noise():
    n = np.array(GRID, dtype=float)
    assert np.allclose(monotone_fit(n, 0.1 + 0.004 * n + 5e-5 * n * n), [0.1, 0.004, 5e-5], atol=1e-9)
    # noisy medians with a dip (a busy moment), and a curve that falls at first: unconstrained least squares would
    # give a negative term; the fit's terms are all >= 0, so it never falls
    noisy = 0.05 + 0.008 * n + np.random.default_rng(0).normal(0, 0.02, len(n))
    noisy[4] -= 0.15
    falling = 0.5 - 0.01 * n + 3e-4 * n * n
    for y in (noisy, falling):
        coef = monotone_fit(n, y)
        assert min(coef) >= 0
        dense = np.linspace(0, 70, 300)
        assert np.all(np.diff(polynomial(coef, dense)) >= 0)
        # it is the non-negative least squares optimum
        scipy_optimize = pytest.importorskip("scipy.optimize")
        reference = scipy_optimize.nnls(np.stack([np.ones_like(n), n, n * n], 1), y)[0]
        assert np.allclose(coef, reference, atol=1e-9)


def test_fit_needs_three_points():
    with pytest.raises(ValueError):
        monotone_fit([2, 65], [0.1, 0.5])


def test_whole_fit_solves_constant_scale_and_reduction():
    """Three whole models (dense; two tokens removed per block; tokens halved) determine the three unknowns exactly,
    more models by least squares; the constraints hold where noise would make one negative."""
    blocks, reductions = [10.0, 9.5, 5.0], [0, 11, 11]

    def whole(constant, scale, reduction, b=blocks, k=reductions):
        return [constant + scale * x + reduction * r for x, r in zip(b, k)]

    assert whole_fit(blocks, reductions, whole(2.0, 1.2, 0.05)) == pytest.approx((2.0, 1.2, 0.05), abs=1e-9)
    # the excess of the dense graph over its halves, proportional: a constant alone (scale 1) cannot fit it
    assert whole_fit(blocks, reductions, whole(0.5, 1.4, 0.0)) == pytest.approx((0.5, 1.4, 0.0), abs=1e-9)
    # a fourth model with noise: least squares, close to the truth
    four = ([*blocks, 3.0], [*reductions, 5])
    noisy = np.array(whole(2.0, 1.2, 0.05, *four)) + [0.01, -0.01, 0.02, -0.02]
    assert whole_fit(*four, noisy) == pytest.approx((2.0, 1.2, 0.05), abs=0.05)
    # the reducing model measured faster than its halves allow (a busy moment in the dense one): the reduction's
    # cost would be negative; it is held at 0 and the rest fitted by least squares on the other two
    constant, scale, reduction = whole_fit(blocks, reductions, [14.0, 13.0, 8.0])
    assert reduction == 0 and scale > 0 and constant >= 0
    scipy_optimize = pytest.importorskip("scipy.optimize")
    basis = np.stack([np.ones(3), blocks, reductions], 1)
    assert np.allclose([constant, scale, reduction], scipy_optimize.nnls(basis, [14.0, 13.0, 8.0])[0], atol=1e-9)
    # models that cannot tell the unknowns apart (no dense model: every one reduces as often) are refused
    with pytest.raises(ValueError, match="span all three"):
        whole_fit([10.0, 5.0, 3.0], [11, 11, 11], [14.0, 8.0, 6.0])


def test_blocks_ms_sums_the_halves_along_a_schedule():
    n = np.array(GRID, dtype=float)
    table = _table(0.1 + 0.004 * n, 0.02 + 0.007 * n)
    a, m = table.attention_fit, table.mlp_fit
    total, reductions = blocks_ms(table, 65, [65, 60, 60, 30])
    expected = 2 * polynomial(a, 65) + polynomial(m, 65) + polynomial(m, 60) + polynomial(a, 60) * 2
    expected += polynomial(m, 60) + polynomial(m, 30)
    assert total == pytest.approx(expected) and reductions == 2


@pytest.fixture(scope="module")
def dense():
    return create_model(digits.MODEL, "pretrained")


def test_latency_cost_is_differentiable_in_the_rates(dense):
    n = np.array(GRID, dtype=float)
    table = _table(0.1 + 0.004 * n + 5e-5 * n * n, 0.02 + 0.007 * n)
    cost, constant = latency_cost(table)
    assert cost.unit == "ms" and constant == 0.2
    model = SearchViT(dense, cost, constant, granularity=1)
    expected = model.expected_cost()
    # the rates start uniform: every block after the first keeps ceil(E[count]) + 1 = 34 tokens
    first = polynomial(table.attention_fit, 65) + polynomial(table.mlp_fit, 65)
    later = polynomial(table.attention_fit, 65) + polynomial(table.mlp_fit, 34)
    later += 10 * (polynomial(table.attention_fit, 34) + polynomial(table.mlp_fit, 34))
    assert float(expected) == pytest.approx(0.2 + first + later, rel=1e-6)
    # a reducing block costs the measured reduction on top of its scaled halves; the fixed part replaces the
    # outside graph's
    table.reduction_ms, table.fixed_ms, table.scale = 0.15, 1.0, 1.3
    cost, constant = latency_cost(table)
    halves = polynomial(table.attention_fit, 65) + polynomial(table.mlp_fit, 50)
    assert constant == 1.0 and float(cost(65, 60, 50)) == pytest.approx(float(cost(65, 65, 50)))
    assert float(cost(65, 60, 50)) == pytest.approx(0.15 + 1.3 * halves)
    dense_halves = polynomial(table.attention_fit, 65) + polynomial(table.mlp_fit, 65)
    assert float(cost(65, 65, 65)) == pytest.approx(1.3 * dense_halves)
    # the model's cost is the calibration's: constant + scale x halves + reduction x reducing blocks
    leaving = [65, 60, 50, 50]
    halves_sum, reductions = blocks_ms(table, 65, leaving)
    n, total = 65, constant
    for out in leaving:
        total, n = total + float(cost(n, n, out)), out
    assert total == pytest.approx(1.0 + 1.3 * halves_sum + 0.15 * reductions)
    # monotone in the tokens: more tokens never cost less
    assert all(float(cost(k + 1, k + 1, k + 1)) > float(cost(k, k, k)) for k in range(2, 65))
    expected.backward()
    for rate in (*model.prune, *model.merge):
        assert rate.logits.grad is not None and rate.logits.grad.abs().sum() > 0


def test_a_table_from_an_older_schedule_file_loads_as_searched():
    """Schedule files written before the calibration (no `scale`, `halving_ms`) give the cost they were searched
    with: the halves unscaled, `fixed_ms` and `reduction_ms` as stored."""
    n = np.array(GRID, dtype=float)
    record = _table(0.1 + 0.004 * n, 0.02 + 0.007 * n).record()
    record.update(reduction_ms=0.1, fixed_ms=3.0, dense_ms=8.0, reducing_ms=7.9)
    del record["scale"], record["halving_ms"]
    table = LatencyTable(**json.loads(json.dumps(record)))
    cost, constant = latency_cost(table)
    assert table.scale == 1.0 and table.halving_ms is None and constant == 3.0
    halves = polynomial(table.attention_fit, 65) + polynomial(table.mlp_fit, 60)
    assert float(cost(65, 65, 60)) == pytest.approx(0.1 + halves)


@pytest.mark.slow  # exports and times 11 graphs (or modules) in spawned processes, as test_bench
@pytest.mark.parametrize("runtime", ["onnxruntime", "pytorch"])
def test_measured_table_is_filled(dense, runtime):
    """The graphs export and run (one round of one call each): the table's shape, not its numbers."""
    from exporter.bench.block_latency import measure

    table = measure(dense, batch=2, threads=1, rounds=1, iterations=1, points=3, log=lambda _: None, runtime=runtime)
    assert table.runtime == runtime
    assert table.grid == [2, 34, 65] and len(table.attention_ms) == len(table.mlp_ms) == 3
    assert table.outside_ms > 0 and table.overhead_ms > 0 and table.machine["threads"] == 1
    assert len(table.attention_fit) == len(table.mlp_fit) == 3 and min(table.attention_fit + table.mlp_fit) >= 0
    assert table.dense_ms > 0 and table.reducing_ms > 0 and table.halving_ms > 0 and table.reduction_ms >= 0
    # one call per graph is noise: the calibration's values are not checked, only that the fit ran
    assert table.fixed_ms >= 0 and table.scale >= 0


@pytest.fixture
def fake_measure(monkeypatch):
    """`search --target-latency-ms` on a fake table: dense is 0.2 + 12 * (0.57125 + 0.475) = 12.755 ms."""
    n = np.array(GRID, dtype=float)
    table = _table(0.1 + 0.004 * n + 5e-5 * n * n, 0.02 + 0.007 * n)
    calls = []

    def measure(vit, batch, threads, runtime="onnxruntime", **kwargs):
        calls.append((batch, threads) if runtime == "onnxruntime" else (batch, threads, runtime))
        return table

    monkeypatch.setattr("exporter.bench.block_latency.measure", measure)
    return calls


@pytest.fixture(scope="module")
def train(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits-latency") / "train"
    digits.export_split(out, "train")
    return out


def test_search_command_stores_the_latency_table(train, tmp_path, capsys, fake_measure):
    schedule = tmp_path / "s.json"
    argv = ["search", "--model", digits.MODEL, "--data", str(train), "--images", "32", "--epochs", "1",
            "--batch-size", "32", "--target-latency-ms", "8", "--batch", "8", "--out", str(schedule)]
    assert main(argv) == 0
    assert fake_measure == [(8, 2)]
    assert "fitted ms" in capsys.readouterr().out
    record = json.loads(schedule.read_text())
    assert record["budget"] == {"unit": "ms", "target": 8.0}
    table = record["latency"]
    assert table["grid"] == GRID and table["batch"] == 8 and table["runtime"] == "onnxruntime"
    assert min(table["attention_fit"] + table["mlp_fit"]) >= 0 and table["machine"] == {"cpu": "fake"}
    assert record["dense_latency_ms"] == pytest.approx(12.755, rel=1e-6)
    # the file's predicted latency is the fitted cost of its own counts
    cost, constant = latency_cost(LatencyTable(**table))
    n, predicted = 65, constant
    for leaving in record["tokens_after"]:
        predicted += cost(n, n, leaving)
        n = leaving
    assert record["latency_ms"] == pytest.approx(predicted, rel=1e-6)


@pytest.mark.parametrize("target", ["13", "0.5"])
def test_latency_target_out_of_reach(train, tmp_path, capsys, fake_measure, target):
    argv = ["search", "--model", digits.MODEL, "--data", str(train), "--target-latency-ms", target,
            "--out", str(tmp_path / "s.json")]
    assert main(argv) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "--target-latency-ms" in err and "outside what DiffRate can reach" in err and "Traceback" not in err
    assert not (tmp_path / "s.json").exists()


def test_latency_not_falling_with_tokens_is_refused(train, tmp_path, capsys, monkeypatch):
    """A calibration whose scale is 0 (the whole model as slow with half its tokens: a busy machine) leaves the
    search no gradient: one sentence, exit 2."""
    n = np.array(GRID, dtype=float)
    table = _table(0.1 + 0.004 * n, 0.02 + 0.007 * n)
    table.fixed_ms, table.scale, table.dense_ms, table.halving_ms = 9.0, 0.0, 9.0, 9.1
    monkeypatch.setattr("exporter.bench.block_latency.measure", lambda *a, **k: table)
    argv = ["search", "--model", digits.MODEL, "--data", str(train), "--target-latency-ms", "8",
            "--out", str(tmp_path / "s.json")]
    assert main(argv) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "does not fall with its tokens" in err and "--target-flops" in err and "Traceback" not in err


def test_search_passes_the_runtime_and_refuses_a_gpu_runtime_without_a_gpu(train, tmp_path, capsys, fake_measure):
    argv = ["search", "--model", digits.MODEL, "--data", str(train), "--images", "32", "--epochs", "1",
            "--batch-size", "32", "--target-latency-ms", "8", "--batch", "8", "--out", str(tmp_path / "s.json")]
    assert main(argv + ["--runtime", "pytorch"]) == 0
    assert fake_measure == [(8, 2, "pytorch")]
    if not torch.cuda.is_available():
        assert main(argv + ["--runtime", "pytorch-cuda-graph"]) == 2
        err = capsys.readouterr().err
        assert "--runtime pytorch-cuda-graph measures the latency on a CUDA GPU" in err and "Traceback" not in err
        assert fake_measure == [(8, 2, "pytorch")]  # refused before measuring


def test_one_budget_only(train, capsys):
    with pytest.raises(SystemExit) as e:
        main(["search", "--model", digits.MODEL, "--data", str(train), "--target-flops", "0.03",
              "--target-latency-ms", "8"])
    assert e.value.code == 2
