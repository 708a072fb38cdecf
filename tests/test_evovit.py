# SPDX-License-Identifier: Apache-2.0
"""Evo-ViT: against a plain re-implementation of the slow-fast update (written with the authors' sort,
flattened gathers and in-place writes), at the extremes, in fp16, through ONNX, and on bad input."""
from __future__ import annotations


import pytest
import timm
import torch

from exporter.errors import ExporterError
from exporter.methods import apply_method, get_method
from exporter.methods.base import int_list
from reference_evit_evovit import (
    check_fp16_keeps_fp32_tokens,
    check_onnx_parity,
    CASE_IDS,
    CASES,
    FP32_MARGIN,
    PATCHES,
    assert_same_tokens,
    decisive_images,
    decisive_vit,
    images,
    run,
)
from reference_evit_evovit import evovit as reference

PARAMS = dict(keep_rate=0.5, stages=(2, 4), alpha=0.5)


def test_registered_params():
    method = get_method("evovit")
    assert [(p.name, p.parse, p.default) for p in method.params] == [
        ("keep_rate", float, 0.5),
        ("stages", int_list, (4, 8)),
        ("alpha", float, 0.5),
    ]


def test_deit_small_schedule():
    with torch.device("meta"):  # the schedule needs the structure only
        vit = timm.create_model("deit_small_patch16_224", pretrained=False)
    reduced = apply_method(vit, "evovit")
    assert reduced.keep == 98  # of 196 patch tokens
    assert reduced.schedule == [197] * 4 + [100] * 8  # class + 98 informative + rep inside the stages


@pytest.mark.parametrize("params", [
    PARAMS,
    dict(keep_rate=0.3, stages=(1, 3, 5), alpha=0.0),  # round(19.2) = 19 informative, three stages
    dict(keep_rate=0.7, stages=(3,), alpha=1.0),  # one stage, g frozen at block 2's attention
], ids=["default", "three-stages", "one-stage"])
@pytest.mark.parametrize("config, batch, seed", CASES, ids=CASE_IDS)
def test_matches_reference(config, params, batch, seed):
    vit = decisive_vit(seed, **config)
    img = decisive_images(vit, reference, params, batch, FP32_MARGIN, seed)
    want, kept, _ = reference(vit, img, **params)
    got, ids = run(apply_method(vit, "evovit", **params), img)
    assert_same_tokens(ids, kept)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("keep_rate", [1.0, 0.995])  # round(63.68) = 64 of 64 tokens: dense as well
def test_keep_all_is_the_dense_model(keep_rate):
    vit = decisive_vit(1, init_values=0.1)
    reduced = apply_method(vit, "evovit", keep_rate=keep_rate, stages=(2, 4))
    assert reduced.schedule == [PATCHES + 1] * 6
    img = images(vit, 2, seed=7)
    logits, ids = run(reduced, img)
    assert ids == []
    with torch.no_grad():
        torch.testing.assert_close(logits, vit(img), atol=1e-5, rtol=0)


def test_keeping_one_token():
    vit = decisive_vit(2)
    params = dict(keep_rate=1 / PATCHES, stages=(2, 4), alpha=0.5)
    reduced = apply_method(vit, "evovit", **params)
    assert reduced.schedule == [65, 65, 3, 3, 3, 3]  # class, the one informative token, rep
    img = decisive_images(vit, reference, params, 2, FP32_MARGIN)
    want, kept, _ = reference(vit, img, **params)
    got, ids = run(reduced, img)
    assert [t.shape[1] for t in ids] == [1, 1]
    assert_same_tokens(ids, kept)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_fp16_keeps_the_fp32_tokens(monkeypatch):
    check_fp16_keeps_fp32_tokens(monkeypatch, "evovit", reference, PARAMS, selections=4)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_onnx_parity(tmp_path, precision):
    check_onnx_parity(tmp_path / "evovit.onnx", precision, "evovit", reference, PARAMS, topk_ks=[32, 32])


@pytest.mark.parametrize("params, message", [
    (dict(keep_rate=0.0), "keep_rate must be in (0, 1]"),
    (dict(keep_rate=1.5), "keep_rate must be in (0, 1]"),
    (dict(keep_rate=0.005), "keep_rate 0.005 keeps no informative token of 64 patch tokens"),
    (dict(stages=(2, 6)), "stages [6] lie outside the model's blocks 0..5"),
    (dict(stages=(0, 2)), "starting at 1 or later"),
    (dict(stages=(4, 2)), "strictly increasing list of blocks starting at 1 or later"),
    (dict(stages=(2, 2)), "got [2, 2]"),
    (dict(stages=()), "non-empty"),
    (dict(alpha=1.5), "alpha must be in [0, 1], got 1.5"),
    (dict(alpha=-0.1), "alpha must be in [0, 1], got -0.1"),
    (dict(momentum=0.5), "--momentum is not a parameter of method 'evovit'"),
])
def test_bad_params(params, message):
    with pytest.raises(ExporterError) as info:
        apply_method(decisive_vit(0), "evovit", **dict(dict(stages=(2, 4)), **params))
    assert message in str(info.value)


def test_rejects_a_model_without_class_token_attention():
    with pytest.raises(ExporterError, match="needs a timm VisionTransformer"):
        apply_method(torch.nn.Linear(3, 3), "evovit")
    with pytest.raises(ExporterError, match="no class token"):
        apply_method(decisive_vit(0, class_token=False, global_pool="avg"), "evovit", stages=(2, 4))
