"""Replaying token choices: PyTorch computes what another run computed after a near-tie went the other way."""
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
from exporter.verify.inputs import held_out

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


@pytest.mark.parametrize("method", sorted(METHODS))
def test_fp16_flip_is_judged_at_its_first_cut(method, monkeypatch):
    """A graph that tips PyTorch's closest near-tie at the first reduction is replayed and passes; one that drops the
    token PyTorch ranks first there fails, with a sentence naming the sample, the reduction and the margin.
    PyTorch replaying those choices stands in for the fp16 graph and its debug twin."""
    torch.manual_seed(3)  # weights with a near-tie at every method's first reduction (margin < 0.5x the fp16 error)
    model = apply_method(timm.create_model("test_vit").eval(), method, **METHODS[method])
    size = (160, 160)
    x, _ = held_out(model, size)
    (_, *kept), decisions = compare._scored(model, x)
    rounding = compare._rounding(model, x, kept, decisions)
    first, offset = decisions[0], int(method == "diffrate")  # kept[0] holds its chosen indices (DiffRate's + 1)
    ratio = margin(first) / np.maximum(rounding.errors[0], 1e-30)
    near, clear = int(np.argmin(ratio)), int(np.argmax(ratio))
    assert ratio[near] <= NEAR_TIE < ratio[clear]

    def swapped(sample: int, rank: int) -> list[np.ndarray]:
        """fp32's choices, but at `sample` the kept token of this rank (by fp32 score) swapped for the best one left."""
        scores, chosen = first.scores[sample, 0], first.chosen[sample, 0]
        ranked = chosen[np.argsort(-scores[chosen])]
        best_left = int(np.argmax(np.where(np.isin(np.arange(scores.size), chosen), -np.inf, scores)))
        other = [k.copy() for k in kept]
        other[0][sample][other[0][sample] == ranked[rank] + offset] = best_left + offset
        return other

    def check(choices: list[np.ndarray]):
        def runner(path, threads=None):
            run = torch_runner(model, choices)
            return (lambda batch: run(batch)[:1]) if path.name == "model.fp16.onnx" else run

        monkeypatch.setattr(compare, "onnx_runner", runner)
        graph = Graph("model.fp16.onnx", "fp16", debug=Path("model.fp16.debug.onnx"))
        (result,) = compare.compare_graphs(model, Path("bundle"), [graph], BatchRange(8, 8, 8), size)
        return result

    tie = check(swapped(near, -1))  # the lowest kept for the best left: the cut itself
    assert tie.passed and tie.token_flips == tie.replayed_flips == 1
    assert [(c["sample"], c["reduction"], c["near_tie"]) for c in tie.cuts] == [(near, 1, True)]
    bug = check(swapped(clear, 0))  # the best kept for the best left
    assert not bug.passed and bug.token_flips == 1 and bug.replayed_flips == 0
    sentence = f"sample {clear}'s {first.what} at reduction 1 differ from PyTorch fp32's against an fp32 score margin"
    assert any(f.startswith(sentence) for f in bug.failures)
