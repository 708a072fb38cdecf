# SPDX-License-Identifier: Apache-2.0
"""Replaying token choices: PyTorch computes what another run computed after a near-tie went the other way."""
import copy
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from exporter.checks import compare
from exporter.checks.margins import margin
from exporter.checks.parity import NEAR_TIE
from exporter.export.graphs import Graph
from exporter.methods import apply_method
from exporter.methods.base import Traced
from exporter.runtime import torch_runner
from exporter.spec import BatchRange
from exporter.checks.inputs import held_out

METHODS = {
    "evit": dict(locations=(1, 3)),
    "evovit": dict(stages=(2, 4)),
    "diffrate": dict(prune_kept=[40, 35, 30, 28, 26, 24], merge_kept=[38, 33, 29, 27, 25, 22]),
    "tome": dict(r=8),
}


def _run(model, x, replay=None):
    with torch.no_grad():
        logits, *chosen = Traced(model)(x, replay)
    return logits, chosen


@pytest.mark.parametrize("method", sorted(METHODS))
def test_replay(method):
    torch.manual_seed(0)
    model = apply_method(timm.create_model("test_vit").eval(), method, **METHODS[method])
    x = torch.randn(4, 3, 160, 160, generator=torch.Generator().manual_seed(1))
    logits, chosen = _run(model, x)
    # replaying a run's own choices takes the replay code paths (ToMe's unmerged set rebuilt from the merged
    # one, DiffRate's similarities gathered at the partners) and must change nothing
    again, rechosen = _run(model, x, chosen)
    assert torch.equal(again, logits) and all(torch.equal(a, b) for a, b in zip(chosen, rechosen))
    # another input's choices are used as given (also where they differ from what x would choose)
    _, other = _run(model, x.roll(1, dims=0))
    forced, used = _run(model, x, other)
    assert all(torch.equal(a, b) for a, b in zip(other, used))
    assert any(not torch.equal(a, b) for a, b in zip(chosen, other)) and not torch.allclose(forced, logits)


class FlipCase:
    """A model with a near-tie at its first reduction (margin < 0.5x the fp16 error) on some held-out sample,
    fake fp16 graphs that PyTorch replaying given choices stands in for, and `compare_graphs` on them."""

    def __init__(self, method, monkeypatch):
        torch.manual_seed(3)  # weights with a near-tie at every method's first reduction
        self.model = apply_method(timm.create_model("test_vit").eval(), method, **METHODS[method])
        self.size = (160, 160)
        self.monkeypatch = monkeypatch
        x, _ = held_out(self.model, self.size)
        (_, *self.kept), decisions = compare._scored(self.model, x)
        rounding = compare._rounding(self.model, x, self.kept, decisions)
        self.first, self.offset = decisions[0], int(method == "diffrate")  # kept[0]: chosen indices (DiffRate's + 1)
        ratio = margin(self.first) / np.maximum(rounding.errors[0], 1e-30)
        self.near, self.clear = int(np.argmin(ratio)), int(np.argmax(ratio))
        assert ratio[self.near] <= NEAR_TIE < ratio[self.clear]

    def swapped(self, sample: int, rank: int) -> list[np.ndarray]:
        """fp32's choices, but at `sample` the kept token of this rank (by fp32 score) swapped for the best one left."""
        scores, chosen = self.first.scores[sample, 0], self.first.chosen[sample, 0]
        ranked = chosen[np.argsort(-scores[chosen])]
        best_left = int(np.argmax(np.where(np.isin(np.arange(scores.size), chosen), -np.inf, scores)))
        other = [k.copy() for k in self.kept]
        other[0][sample][other[0][sample] == ranked[rank] + self.offset] = best_left + self.offset
        return other

    def check(self, choices: list[np.ndarray], scored_by=None):
        """The fp16 graph's result; its debug twin outputs the kept indices, and with `scored_by` (a model) also
        every choice's scores as that model computes them on the graph's tokens, as an fp16 debug graph does."""
        model = self.model

        def runner(path, threads=None, scores=False):  # a standard-op graph: its debug twin outputs any scores
            run = torch_runner(model, choices)
            if path.name == "model.fp16.onnx":
                return lambda batch: run(batch)[:1]
            if scored_by is None:
                return run
            made: list = []
            scorer = torch_runner(scored_by, choices, made)
            dtype = next(scored_by.parameters()).dtype

            def debug(batch):
                outputs = run(batch)
                scorer(batch.astype(np.float16 if dtype == torch.float16 else np.float32))
                return outputs + [scores for _, _, scores, _ in made[-1]]
            return debug

        self.monkeypatch.setattr(compare, "onnx_runner", runner)
        graph = Graph("model.fp16.onnx", "fp16", debug=Path("model.fp16.debug.onnx"))
        (result,) = compare.compare_graphs(model, Path("bundle"), [graph], BatchRange(8, 8, 8), self.size)
        return result


@pytest.mark.parametrize("method", sorted(METHODS))
def test_fp16_flip_is_judged_at_its_first_cut(method, monkeypatch):
    """A graph that tips PyTorch's closest near-tie at the first reduction is replayed and passes; one that drops the
    token PyTorch ranks first there fails, with a sentence naming the sample, the reduction and the margin.
    Without the graph's scores (a plugin graph), PyTorch's half model estimates their fp16 error."""
    case = FlipCase(method, monkeypatch)
    tie = case.check(case.swapped(case.near, -1))  # the lowest kept for the best left: the cut itself
    assert tie.passed and tie.token_flips == tie.replayed_flips == 1
    assert [(c["sample"], c["reduction"], c["near_tie"], c["estimated"]) for c in tie.cuts] == [(case.near, 1, True, True)]
    bug = case.check(case.swapped(case.clear, 0))  # the best kept for the best left
    assert not bug.passed and bug.token_flips == 1 and bug.replayed_flips == 0
    sentence = f"sample {case.clear}'s {case.first.what} at reduction 1 differ from PyTorch fp32's against an fp32 score margin"
    assert any(f.startswith(sentence) and "estimated by PyTorch half): not a near-tie" in f for f in bug.failures)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_fp16_flip_is_judged_by_the_graphs_own_score_error(method, monkeypatch):
    """Where the debug graph outputs its scores, their measured error decides, not the half-model estimate: the same
    tipped near-tie passes when the graph's scores carry fp16 rounding (the half model's, on the graph's tokens) and
    fails when they carry none (exact fp32 scores: nothing could have tipped the choice)."""
    case = FlipCase(method, monkeypatch)
    tipped = case.swapped(case.near, -1)
    rounded = case.check(tipped, scored_by=copy.deepcopy(case.model).half())
    assert rounded.passed and [(c["sample"], c["near_tie"], c["estimated"]) for c in rounded.cuts] == [(case.near, True, False)]
    exact = case.check(tipped, scored_by=case.model)
    assert not exact.passed and [(c["sample"], c["near_tie"], c["error"]) for c in exact.cuts] == [(case.near, False, 0.0)]
    assert any("those scores (0): not a near-tie" in f for f in exact.failures)


@pytest.mark.parametrize("cut_from_twins", [True, False])
def test_a_graph_cut_from_its_twin_runs_once(cut_from_twins, monkeypatch):
    """In a build, the deliverable graph was cut from its debug twin: the twin's logits stand for it at the range's
    other sizes (rows say so) and the graph itself runs at opt, where a graph that computes something else fails.
    verify, whose graph may come from elsewhere, runs the graph at every size."""
    torch.manual_seed(0)
    model = apply_method(timm.create_model("test_vit").eval(), "tome", **METHODS["tome"])
    ran: list[tuple[str, int]] = []

    def runner(path, threads=None, scores=False):
        run = torch_runner(model)
        broken = path.name == "broken.onnx"

        def graph(batch):
            ran.append((path.name, batch.shape[0]))
            logits, *chosen = run(batch)
            return [logits + broken] if path.name != "model.debug.onnx" else [logits, *chosen]
        return graph

    monkeypatch.setattr(compare, "onnx_runner", runner)
    graphs = [Graph(name, "fp32", debug=Path("model.debug.onnx")) for name in ("model.onnx", "broken.onnx")]
    results = compare.compare_graphs(model, Path("bundle"), graphs, BatchRange(1, 2, 4), (160, 160),
                                     cut_from_twins=cut_from_twins)
    by_twin = {(r.graph, r.batch) for r in results if r.ran == compare.TWIN}
    deliverable_sizes = {(name, size) for name, size in ran if name != "model.debug.onnx"}
    if cut_from_twins:
        assert by_twin == {(g.file, b) for g in graphs for b in (1, 4)}
        assert deliverable_sizes == {("model.onnx", 2), ("broken.onnx", 2)}
    else:
        assert not by_twin and deliverable_sizes == {(g.file, b) for g in graphs for b in (1, 2, 4)}
    failed = {(r.graph, r.batch) for r in results if not r.passed}
    assert failed == ({("broken.onnx", 2)} if cut_from_twins else {("broken.onnx", b) for b in (1, 2, 4)})


def test_the_references_and_the_parity_check_share_pytorchs_runs(monkeypatch, tmp_path):
    """A build's stored references and its parity check hold the model to the same held-out images (fp16 values, as
    references.npz stores them), and PyTorch runs on them once for both."""
    from exporter.verify import references

    torch.manual_seed(0)
    model = apply_method(timm.create_model("test_vit").eval(), "tome", **METHODS["tome"])
    x, _ = held_out(model, (160, 160))
    assert torch.equal(x.half().float(), x)
    runs: list[int] = []
    scored = compare._scored

    def counted(m, inputs, replay=None):
        if m is model and replay is None:
            runs.append(inputs.shape[0])
        return scored(m, inputs, replay)

    monkeypatch.setattr(compare, "_scored", counted)
    answers = compare.TorchAnswers(model)
    refs = references.store(model, (160, 160), tmp_path, answers)
    assert np.array_equal(refs.inputs[: len(x)], x.half().numpy())
    stored = list(runs)
    deliverable = torch_runner(model)
    monkeypatch.setattr(compare, "onnx_runner", lambda path, threads=None, scores=False: lambda x: deliverable(x)[:1])
    (result,) = compare.compare_graphs(model, tmp_path, [Graph("model.onnx", "fp32")], BatchRange(2, 2, 2), (160, 160),
                                       answers=answers)
    assert result.passed and runs == stored and stored[0] == len(x)


def test_a_graph_runs_once_on_a_batch(monkeypatch):
    """verify's sessions: a graph opened once, and run once on a batch however many checks run that batch."""
    from exporter.verify import evaluate

    ran: list[str] = []
    monkeypatch.setattr(evaluate, "onnx_runner", lambda path: lambda x: ran.append(path.name) or [x.sum(axis=1)])
    open_graph = evaluate._sessions()
    a, b = np.ones((2, 3), np.float32), np.zeros((2, 3), np.float32)
    first = open_graph(Path("model.onnx"))(a)
    assert open_graph(Path("model.onnx")) is open_graph(Path("model.onnx"))
    assert open_graph(Path("model.onnx"))(a.copy()) is first and ran == ["model.onnx"]
    open_graph(Path("model.onnx"))(b)
    open_graph(Path("model.fp16.onnx"))(a)
    assert ran == ["model.onnx", "model.onnx", "model.fp16.onnx"]
