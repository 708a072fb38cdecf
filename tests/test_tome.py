# SPDX-License-Identifier: Apache-2.0
"""ToMe: against a plain re-implementation of the authors' inference, at the extremes, through ONNX, the r
schedules, and bad input."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import timm
import torch

from exporter.errors import ExporterError
from exporter.export.onnx_export import export_onnx
from exporter.methods import Traced, apply_method, get_method
from exporter.methods.tome import capped, parse_r, r_per_block
from reference_diffrate_tome import assert_tensorrt_friendly
from reference_diffrate_tome import tome as reference
from vits import decisive_vit, images

pytestmark = pytest.mark.usefixtures("single_thread")

RANK_GAP = 1e-5  # cosine gap at the r cut; fp32 paths here differ by ~1e-6
MATCH_GAP = 1e-5  # cosine gap between a merged token's best and second-best partner

MODELS = {
    "token": dict(),  # 65 tokens: odd
    "even": dict(img_size=56),  # 50 tokens: even, A and B the same size
    "layerscale": dict(init_values=1.0),
    "avg": dict(global_pool="avg"),  # MAE-style: size-weighted pooling, no proportional attention
}


def assert_decisive(log):
    """Fail loudly when a test input puts a near-tie at a cut: a flipped token there is no bug."""
    for block, entry in enumerate(log):
        if entry["rank_gap"] is not None:
            assert entry["rank_gap"].min() > RANK_GAP, f"input not decisive: near-tie at the r cut, merge {block}"
        if entry["match_gaps"] is not None:
            assert entry["match_gaps"].min() > MATCH_GAP, f"input not decisive: near-tie of partners, merge {block}"


def pairs(src, dst):
    """{merged A position: its B partner} per image: the order among merged tokens carries no meaning."""
    return [dict(zip(s.tolist(), d.tolist())) for s, d in zip(torch.as_tensor(src), torch.as_tensor(dst))]


def run(reduced, img):
    with torch.no_grad():
        logits, *trace = Traced(reduced)(img)
    return logits, trace


def assert_matches_reference(reduced, vit, img):
    expected, log = reference(vit, img, reduced.r, reduced.prop_attn)
    assert_decisive(log)
    logits, trace = run(reduced, img)
    assert len(trace) == 2 * len(log)
    for step, entry in enumerate(log):
        src, dst = trace[2 * step], trace[2 * step + 1]
        assert torch.equal(src, entry["src"]), f"merged tokens differ (merge {step})"  # both best match first
        assert torch.equal(dst, entry["dst"]), f"partners differ (merge {step})"
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("seed, batch", [(0, 1), (2, 3)])
@pytest.mark.parametrize("r", [8, (10, -1)])
def test_matches_authors_algorithm(kind, seed, batch, r):
    vit = decisive_vit(seed, **MODELS[kind])
    reduced = apply_method(vit, "tome", r=r)
    assert reduced.prop_attn == (kind != "avg")
    assert_matches_reference(reduced, vit, images(vit, batch, 200 + seed))  # decisive inputs for these models


@pytest.mark.parametrize("kind", MODELS)
def test_r_at_the_cap_merges_down_to_two_tokens(kind):
    vit = decisive_vit(3, **MODELS[kind])
    reduced = apply_method(vit, "tome", r=[99] * 6)
    n = reduced.num_tokens
    expected = []
    for _ in range(6):
        n -= (n - 1) // 2
        expected.append(n)
    assert reduced.schedule == expected and expected[-1] == 2
    assert_matches_reference(reduced, vit, images(vit, 3, 4))


def test_proportional_attention_can_be_switched():
    vit = decisive_vit(0)
    reduced = apply_method(vit, "tome", r=8, prop_attn=False)
    assert not reduced.prop_attn
    assert_matches_reference(reduced, vit, images(vit, 3, 100))


@pytest.mark.parametrize("kind", MODELS)
def test_r_zero_is_the_dense_model(kind):
    vit = decisive_vit(1, **MODELS[kind])
    reduced = apply_method(vit, "tome", r=0)
    assert reduced.schedule == [reduced.num_tokens] * 6
    img = images(vit, 2, 7)
    with torch.no_grad():
        torch.testing.assert_close(reduced(img), vit(img), atol=1e-5, rtol=1e-5)


def test_onnx_matches_torch(tmp_path):
    vit = decisive_vit(0)
    reduced = apply_method(vit, "tome", r=[8, 8, 8, 8, 20, 99])  # the last block merges at the cap
    path = export_onnx(Traced(reduced), tmp_path / "tome.onnx", img_size=64, batch=(1, 2, 4))
    assert_tensorrt_friendly(onnx.load(str(path), load_external_data=False))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch, seed in [(1, 11), (3, 12)]:
        img = images(vit, batch, seed)
        assert_decisive(reference(vit, img, reduced.r, reduced.prop_attn)[1])
        logits, trace = run(reduced, img)
        got = session.run(None, {"input": img.numpy()})
        assert len(got) == 1 + len(trace)
        np.testing.assert_allclose(got[0], logits.numpy(), atol=1e-4, rtol=1e-4)
        for step in range(0, len(trace), 2):
            mine, theirs = pairs(*trace[step : step + 2]), pairs(*got[1 + step : 3 + step])
            assert theirs == mine, f"merge {step // 2}, batch {batch}"


# ---- r schedules ----------------------------------------------------------------------------

def test_r_schedules_as_the_authors_parse_r():
    assert r_per_block(12, 13) == [13] * 12
    assert r_per_block(12, (16, -1)) == [32, 29, 26, 23, 20, 17, 14, 11, 8, 5, 2, 0]
    assert r_per_block(12, (16, 0.5)) == [8, 9, 10, 12, 13, 15, 16, 18, 19, 21, 22, 24]
    assert r_per_block(12, (13, -0.3)) == [16, 15, 14, 14, 13, 13, 12, 12, 11, 11, 10, 10]  # int() truncates
    assert r_per_block(4, [5, 4]) == [5, 4, 0, 0]
    assert r_per_block(1, 7) == [7]


def test_deit_small_r13_schedule():
    with torch.device("meta"):
        vit = timm.create_model("deit_small_patch16_224", pretrained=False)
    reduced = apply_method(vit, "tome", r=13)
    assert reduced.schedule == list(range(184, 40, -13))


def test_command_line_forms():
    parse = {p.name: p for p in get_method("tome").params}["r"].parse
    assert parse is parse_r
    assert parse("13") == 13
    assert parse("13,12,11") == [13, 12, 11]
    assert parse("[13, 12]") == [13, 12]
    assert parse("16:-1") == (16, -1.0)
    assert parse("(16, -0.5)") == (16, -0.5)
    vit = decisive_vit(0)
    tokens = vit.patch_embed.num_patches + 1  # the params record the r that ran: capped per block
    assert apply_method(vit, "tome", r="16:-1").params["r"] == capped(tokens, r_per_block(6, (16, -1)))


@pytest.mark.parametrize(
    "r, message",
    [
        ("13,x", "not a comma-separated list"),
        ("thirteen", "is not a number of tokens"),
        ("(16)", "is not an r:inflection pair"),
        ("16:-1:2", "is not an r:inflection pair"),
        ("16:2", "inflection 2.0 lies outside -1..1"),
        ([1] * 7, "lists 7 values but the model has 6 blocks"),
        ([3, -1], "negative"),
        ((1, 2, 3), "tuple of 3 values"),
    ],
)
def test_bad_input(r, message):
    with pytest.raises(ExporterError) as info:
        apply_method(decisive_vit(0), "tome", r=r)
    assert message in str(info.value)
