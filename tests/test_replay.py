"""Replaying token choices: PyTorch computes what another run computed after a near-tie went the other way."""
import pytest
import timm
import torch

from exporter.methods import apply_method
from exporter.methods.base import Traced

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
