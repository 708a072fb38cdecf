# SPDX-License-Identifier: Apache-2.0
"""Latency as DiffRate's search cost (`methods.latency_cost`, `bench.block_latency`, `search --target-latency-ms`).

No timed assertion: the fit and the plumbing are tested on fake timing tables; the one measurement here checks that
the block graphs export and run and fill the table, not what they measure. What a latency-targeted search reaches
against `bench` is measured in docs/search.md.
"""
import json

import numpy as np
import pytest

from exporter.cli import main
from exporter.fixtures import digits
from exporter.methods.diffrate_search import SearchViT
from exporter.methods.latency_cost import (
    LatencyTable,
    latency_cost,
    monotone_fit,
    polynomial,
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
    # a reducing block costs the measured reduction on top of its halves; the fixed part replaces the outside graph's
    table.reduction_ms, table.fixed_ms = 0.15, 1.0
    cost, constant = latency_cost(table)
    assert constant == 1.0 and float(cost(65, 60, 50)) == pytest.approx(float(cost(65, 65, 50)))
    assert float(cost(65, 60, 50)) == pytest.approx(0.15 + polynomial(table.attention_fit, 65) + polynomial(table.mlp_fit, 50))
    assert float(cost(65, 65, 65)) == pytest.approx(polynomial(table.attention_fit, 65) + polynomial(table.mlp_fit, 65))
    expected.backward()
    for rate in (*model.prune, *model.merge):
        assert rate.logits.grad is not None and rate.logits.grad.abs().sum() > 0


@pytest.mark.slow  # exports and times 10 graphs in spawned processes, as test_bench
def test_measured_table_is_filled(dense):
    """The graphs export and run (one round of one call each): the table's shape, not its numbers."""
    from exporter.bench.block_latency import measure

    table = measure(dense, batch=2, threads=1, rounds=1, iterations=1, points=3, log=lambda _: None)
    assert table.grid == [2, 34, 65] and len(table.attention_ms) == len(table.mlp_ms) == 3
    assert table.outside_ms > 0 and table.overhead_ms > 0 and table.machine["threads"] == 1
    assert len(table.attention_fit) == len(table.mlp_fit) == 3 and min(table.attention_fit + table.mlp_fit) >= 0
    assert table.dense_ms > 0 and table.reducing_ms > 0 and table.reduction_ms >= 0
    assert table.fixed_ms >= table.outside_ms


@pytest.fixture
def fake_measure(monkeypatch):
    """`search --target-latency-ms` on a fake table: dense is 0.2 + 12 * (0.57125 + 0.475) = 12.755 ms."""
    n = np.array(GRID, dtype=float)
    table = _table(0.1 + 0.004 * n + 5e-5 * n * n, 0.02 + 0.007 * n)
    calls = []

    def measure(vit, batch, threads, **kwargs):
        calls.append((batch, threads))
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


def test_one_budget_only(train, capsys):
    with pytest.raises(SystemExit) as e:
        main(["search", "--model", digits.MODEL, "--data", str(train), "--target-flops", "0.03",
              "--target-latency-ms", "8"])
    assert e.value.code == 2
