"""Evo-ViT: against a plain re-implementation of the slow-fast update (written with the authors' sort,
flattened gathers and in-place writes), at the extremes, in fp16, through ONNX, and on bad input."""
from __future__ import annotations

import copy

import onnx
import onnxruntime as ort
import pytest
import timm
import torch

import exporter.methods.evovit as evovit_module
from exporter.errors import ExporterError
from exporter.export.fp16 import export_fp16
from exporter.export.lint import lint
from exporter.export.onnx_export import export_onnx
from exporter.methods import Traced, apply_method, get_method
from exporter.methods.base import int_list
from reference_evit_evovit import (
    CASE_IDS,
    CASES,
    FP16_MARGIN,
    FP32_MARGIN,
    PATCHES,
    assert_same_tokens,
    decisive_images,
    decisive_vit,
    images,
    run,
    static_topk_ks,
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
    vit = decisive_vit(3)
    reduced = apply_method(vit, "evovit", **PARAMS)
    score_dtypes = []

    def top_indices(scores, k):
        score_dtypes.append(scores.dtype)
        return torch.topk(scores, k, dim=-1).indices

    monkeypatch.setattr(evovit_module, "top_indices", top_indices)
    img = decisive_images(vit, reference, PARAMS, 3, FP16_MARGIN, seed=30)
    logits32, ids32 = run(reduced, img)
    logits16, ids16 = run(copy.deepcopy(reduced).half(), img)
    assert score_dtypes == [torch.float32] * 4, "token scores must be fp32 in the half model too"
    assert_same_tokens(ids16, ids32)
    torch.testing.assert_close(logits16, logits32, atol=2e-2, rtol=0)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_onnx_parity(tmp_path, precision):
    """The exported graph (dynamic batch) keeps the tokens PyTorch fp32 keeps, at batch 1 and 3."""
    vit = decisive_vit(4)
    reduced = apply_method(vit, "evovit", **PARAMS)
    path, names = tmp_path / "evovit.onnx", ["logits", "k0", "k1"]
    if precision == "fp32":
        export_onnx(Traced(reduced), path, 64, batch=(1, 2, 4), output_names=names)
        margin, atol = FP32_MARGIN, 1e-4
    else:
        facts = export_fp16(Traced(reduced), path, img_size=64, batch=(1, 2, 4), output_names=names)
        assert facts["unguarded_selectors"] == [], "a TopK ranks fp16 scores"
        margin, atol = FP16_MARGIN, 2e-2
    assert lint(path) == []
    assert static_topk_ks(onnx.load(str(path), load_external_data=False)) == [32, 32]
    session = ort.InferenceSession(str(path))
    for batch, seed in [(1, 40), (3, 50)]:
        img = decisive_images(vit, reference, PARAMS, batch, margin, seed)
        logits, *kept = session.run(None, {"input": img.numpy()})
        want, ids = run(reduced, img)
        assert_same_tokens([torch.from_numpy(k) for k in kept], ids)
        torch.testing.assert_close(torch.from_numpy(logits), want, atol=atol, rtol=0)


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
