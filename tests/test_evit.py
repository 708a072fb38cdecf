# SPDX-License-Identifier: Apache-2.0
"""EViT: against a plain re-implementation of the authors' inference, at the extremes, in fp16, through
ONNX, and on bad input."""
from __future__ import annotations


import pytest
import timm
import torch

from exporter.errors import ExporterError
from exporter.methods import apply_method, get_method
from exporter.methods.base import boolean, int_list
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
    evit_identities,
)
from reference_evit_evovit import evit as reference
from reference_evit_evovit import run as run_traced

PARAMS = dict(keep_rate=0.7, locations=(1, 3, 4), fuse=True)


def run(reduced, img):
    """(logits, kept token identities per reduction) of the reduced module."""
    return run_traced(reduced, img)  # the module records token identities


def test_registered_params():
    method = get_method("evit")
    assert [(p.name, p.parse, p.default) for p in method.params] == [
        ("keep_rate", float, 0.7),
        ("locations", int_list, (3, 6, 9)),
        ("fuse", boolean, True),
    ]


@pytest.mark.parametrize("fuse, schedule", [
    (True, [197] * 3 + [140] * 3 + [100] * 3 + [72] * 3),  # the paper's DeiT-S numbers
    (False, [197] * 3 + [139] * 3 + [98] * 3 + [69] * 3),
])
def test_deit_small_schedule(fuse, schedule):
    with torch.device("meta"):  # the schedule needs the structure only
        vit = timm.create_model("deit_small_patch16_224", pretrained=False)
    assert apply_method(vit, "evit", keep_rate=0.7, locations=(3, 6, 9), fuse=fuse).schedule == schedule


@pytest.mark.parametrize("fuse", [True, False])
@pytest.mark.parametrize("config, batch, seed", CASES, ids=CASE_IDS)
def test_matches_reference(config, fuse, batch, seed):
    vit = decisive_vit(seed, **config)
    params = dict(PARAMS, fuse=fuse)
    img = decisive_images(vit, reference, params, batch, FP32_MARGIN, seed)
    want, kept, _ = reference(vit, img, **params)
    got, ids = run(apply_method(vit, "evit", **params), img)
    assert_same_tokens(ids, evit_identities(kept, PATCHES, fuse))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("keep_rate", [1.0, 0.999])  # 0.999 keeps ceil(63.94) = 64 of 64: no reduction either
def test_keep_all_is_the_dense_model(keep_rate):
    vit = decisive_vit(1, init_values=0.1)
    reduced = apply_method(vit, "evit", keep_rate=keep_rate, locations=(0, 2, 5))
    assert reduced.schedule == [PATCHES + 1] * 6
    img = images(vit, 2, seed=7)
    logits, ids = run(reduced, img)
    assert ids == []
    with torch.no_grad():
        torch.testing.assert_close(logits, vit(img), atol=1e-5, rtol=0)


@pytest.mark.parametrize("fuse", [True, False])
def test_keeping_one_token(fuse):
    vit = decisive_vit(2)
    params = dict(keep_rate=0.01, locations=(1, 3, 4), fuse=fuse)  # ceil(0.63) = 1 patch token
    reduced = apply_method(vit, "evit", **params)
    # without fusing, one patch token is all that is left after block 1 and later locations keep it
    assert reduced.schedule == ([65, 3, 3, 3, 3, 3] if fuse else [65, 2, 2, 2, 2, 2])
    img = decisive_images(vit, reference, params, 2, FP32_MARGIN)
    want, kept, _ = reference(vit, img, **params)
    got, ids = run(reduced, img)
    assert [t.shape[1] for t in ids] == ([1, 1, 1] if fuse else [1])
    assert_same_tokens(ids, evit_identities(kept, PATCHES, fuse))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_fp16_keeps_the_fp32_tokens(monkeypatch):
    check_fp16_keeps_fp32_tokens(monkeypatch, "evit", reference, PARAMS, selections=6)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_onnx_parity(tmp_path, precision):
    check_onnx_parity(tmp_path / "evit.onnx", precision, "evit", reference, PARAMS, topk_ks=[45, 33, 24])


@pytest.mark.parametrize("params, message", [
    (dict(keep_rate=0.0), "keep_rate must be in (0, 1]"),
    (dict(keep_rate=1.5), "keep_rate must be in (0, 1]"),
    (dict(locations=(1, 6)), "locations [6] lie outside the model's blocks 0..5"),
    (dict(locations=(-1,)), "locations [-1] lie outside"),
    (dict(locations=(3, 1)), "strictly increasing list of blocks, got [3, 1]"),
    (dict(locations=(1, 1)), "strictly increasing list of blocks, got [1, 1]"),
    (dict(locations=()), "non-empty"),
    (dict(ratio=0.5), "--ratio is not a parameter of method 'evit'"),
])
def test_bad_params(params, message):
    with pytest.raises(ExporterError) as info:
        apply_method(decisive_vit(0), "evit", **params)
    assert message in str(info.value)


def test_rejects_a_model_without_class_token_attention():
    with pytest.raises(ExporterError, match="needs a timm VisionTransformer"):
        apply_method(torch.nn.Linear(3, 3), "evit")
    with pytest.raises(ExporterError, match="no class token"):
        apply_method(decisive_vit(0, class_token=False, global_pool="avg"), "evit")
