# SPDX-License-Identifier: Apache-2.0
"""DiffRate: against a plain re-implementation of the authors' inference, at the extremes, through ONNX,
with the published schedules, and on bad input."""
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
from exporter.methods.diffrate import FAMILIES, family_of, published
from reference_diffrate_tome import assert_tensorrt_friendly
from reference_diffrate_tome import diffrate as reference
from vits import decisive_vit, images

pytestmark = pytest.mark.usefixtures("single_thread")

N = 65  # tokens of decisive_vit(): 8x8 patches + class token
# Covers every kind of block: nothing (0, 2), prune + merge (1, 5), prune only (3), merge only (4).
PRUNE = [65, 60, 65, 40, 40, 25]
MERGE = [65, 50, 65, 45, 30, 10]
RANK_GAP = 1e-5  # relative class-attention gap at every cut; fp32 paths here differ by ~1e-7 relative
MATCH_GAP = 1e-5  # cosine gap between best and second-best destination; paths differ by ~1e-6

MODELS = {
    "token": dict(),
    "layerscale": dict(init_values=1.0),
    "avg": dict(global_pool="avg"),
}


def choices(reduced, trace, batch):
    """Per reducing block, what was chosen in original token ids: {'kept', 'src', 'dst'}."""
    ids = torch.arange(reduced.num_tokens).expand(batch, -1)
    trace, out = list(trace), {}
    for block, step in enumerate(reduced.steps):
        if step is None:
            continue
        entry = {}
        if step.keep > 1:
            idx = torch.as_tensor(trace.pop(0))
            ids = torch.gather(ids, 1, torch.cat([torch.zeros_like(idx[:, :1]), idx], dim=1))
        else:
            ids = ids[:, :1]
        entry["kept"] = ids
        if step.merge is not None:
            dst = torch.as_tensor(trace.pop(0))
            entry["src"], entry["dst"] = ids[:, step.merge:], torch.gather(ids[:, : step.merge], 1, dst)
            ids = ids[:, : step.merge]
        out[block] = entry
    assert not trace, "more recorded tensors than reductions"
    return out


def assert_decisive(log):
    """Fail loudly when a test input puts a near-tie at a cut: a flipped token there is no bug."""
    for block, entry in enumerate(log):
        for gap in entry["rank_gaps"]:
            assert gap.min() > RANK_GAP, f"input not decisive: class-attention near-tie at a cut in block {block}"
        if entry["match_gaps"] is not None:
            assert entry["match_gaps"].min() > MATCH_GAP, f"input not decisive: similarity near-tie in block {block}"


def assert_same_choices(mine, log):
    for block, entry in mine.items():
        ref = log[block]
        for b in range(entry["kept"].shape[0]):
            assert set(entry["kept"][b].tolist()) == set(ref["kept"][b].tolist()), f"kept tokens, block {block}"
            if "src" in entry:
                got = dict(zip(entry["src"][b].tolist(), entry["dst"][b].tolist()))
                assert got == dict(zip(ref["src"][b].tolist(), ref["dst"][b].tolist())), f"merges, block {block}"
        assert ("src" in entry) == ("src" in ref), f"block {block} merged in one and not the other"


def run_traced(reduced, img):
    traced = Traced(reduced)
    with torch.no_grad():
        logits, *trace = traced(img)
    return logits, trace


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("seed, batch", [(0, 1), (3, 3)])
def test_matches_authors_algorithm(kind, seed, batch):
    vit = decisive_vit(seed, **MODELS[kind])
    reduced = apply_method(vit, "diffrate", prune_kept=PRUNE, merge_kept=MERGE)
    assert reduced.schedule == [65, 50, 50, 40, 30, 10]
    assert [s is None for s in reduced.steps] == [True, False, True, False, False, False]
    img = images(vit, batch, 100 + seed)
    expected, log = reference(vit, img, PRUNE, MERGE)
    assert_decisive(log)
    logits, trace = run_traced(reduced, img)
    assert_same_choices(choices(reduced, trace, batch), log)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", MODELS)
def test_keeping_everything_is_the_dense_model(kind):
    vit = decisive_vit(1, **MODELS[kind])
    reduced = apply_method(vit, "diffrate", prune_kept=[N] * 6, merge_kept=[N] * 6)
    assert reduced.schedule == [N] * 6 and reduced.steps == [None] * 6
    img = images(vit, 2, 7)
    with torch.no_grad():
        torch.testing.assert_close(reduced(img), vit(img), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "kind, prune, merge",
    [
        ("token", [65, 65, 65, 65, 65, 65], [65, 2, 2, 2, 2, 2]),  # everything merged into one patch token
        ("avg", [65, 30, 65, 65, 65, 65], [65, 65, 2, 2, 65, 2]),
        ("token", [65, 1, 1, 65, 1, 1], [65, 65, 65, 65, 65, 65]),  # the class token alone
    ],
)
def test_extreme_schedules_match_authors_algorithm(kind, prune, merge):
    vit = decisive_vit(2, **MODELS[kind])
    reduced = apply_method(vit, "diffrate", prune_kept=prune, merge_kept=merge)
    img = images(vit, 3, 5)
    expected, log = reference(vit, img, prune, merge)
    assert_decisive(log)
    logits, trace = run_traced(reduced, img)
    assert_same_choices(choices(reduced, trace, 3), log)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


def test_negative_sizes_give_no_nan():
    """Tokens whose best cosine similarity is -1 make the authors' sizes negative and their log NaN."""
    vit = decisive_vit(4, depth=3)
    with torch.no_grad():
        for block in vit.blocks[:2]:  # blocks 0-1 leave the tokens as embedded: x = pos_embed + cls_token
            for p in [*block.attn.proj.parameters(), *block.mlp.fc2.parameters()]:
                p.zero_()
        for p in [*vit.patch_embed.parameters(), vit.cls_token, *vit.blocks[1].norm1.parameters()]:
            p.zero_()
        vit.blocks[1].norm1.weight.fill_(1.0)
        direction = torch.randn(vit.embed_dim)
    prune, merge = [N, N, N], [N, 2, N]  # block 1 merges 63 tokens into the best-attended patch

    def nan_in_reference(majority_sign):
        signs = torch.full((N - 1,), float(majority_sign))
        signs[40:] = -majority_sign
        with torch.no_grad():
            vit.pos_embed[0, 1:] = signs[:, None] * direction
            vit.pos_embed[0, 0] = torch.randn(vit.embed_dim)
        return reference(vit, images(vit, 1, 0), prune, merge)[0].isnan().any()

    # Which sign wins the class attention depends on the random weights: make the winner the minority,
    # so the merged size is 1 + (23 same-sign) - (40 opposite) < 0.
    assert nan_in_reference(1) or nan_in_reference(-1), "construction failed to make a negative size"
    reduced = apply_method(vit, "diffrate", prune_kept=prune, merge_kept=merge)
    with torch.no_grad():
        assert torch.isfinite(reduced(images(vit, 1, 0))).all()


def test_onnx_matches_torch(tmp_path):
    vit = decisive_vit(0)
    reduced = apply_method(vit, "diffrate", prune_kept=PRUNE, merge_kept=MERGE)
    path = export_onnx(Traced(reduced), tmp_path / "diffrate.onnx", img_size=64, batch=(1, 2, 4))
    assert_tensorrt_friendly(onnx.load(str(path), load_external_data=False))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch, seed in [(1, 11), (3, 12)]:
        img = images(vit, batch, seed)
        assert_decisive(reference(vit, img, PRUNE, MERGE)[1])
        logits, trace = run_traced(reduced, img)
        got = session.run(None, {"input": img.numpy()})
        assert len(got) == 1 + len(trace)
        np.testing.assert_allclose(got[0], logits.numpy(), atol=1e-4, rtol=1e-4)
        mine, theirs = choices(reduced, trace, batch), choices(reduced, got[1:], batch)
        for block, entry in mine.items():
            for key, value in entry.items():
                assert torch.equal(value, theirs[block][key]), f"{key} differs in block {block}, batch {batch}"


# ---- published schedules --------------------------------------------------------------------

def meta_model(name, **kwargs):
    with torch.device("meta"):
        return timm.create_model(name, pretrained=False, **kwargs)


def test_published_deit_small_2_9():
    reduced = apply_method(meta_model("deit_small_patch16_224"), "diffrate", flops=2.9)
    assert reduced.schedule == [197, 194, 176, 156, 141, 133, 121, 107, 88, 64, 56, 3]
    assert reduced.params["prune_kept"] == (197, 196, 190, 168, 150, 139, 129, 117, 99, 78, 58, 3)


@pytest.mark.parametrize(
    "name, kwargs, family",
    [
        ("deit_tiny_patch16_224", {}, "ViT-T-DeiT"),
        ("vit_tiny_patch16_224", {}, "ViT-T-DeiT"),
        ("deit_small_patch16_224", {}, "ViT-S-DeiT"),
        ("deit3_small_patch16_224", {}, "ViT-S-DeiT"),
        ("deit_base_patch16_224", {}, "ViT-B-DeiT"),
        ("vit_base_patch16_224.mae", {}, "ViT-B-MAE"),
        ("vit_base_patch16_224", {"global_pool": "avg"}, "ViT-B-MAE"),
        ("vit_large_patch16_224", {}, "ViT-L-MAE"),
        ("vit_huge_patch14_224.mae", {}, "ViT-H-MAE"),
    ],
)
def test_family_by_architecture(name, kwargs, family):
    assert family_of(meta_model(name, **kwargs)).name == family


def test_every_published_schedule_builds():
    examples = {"ViT-T-DeiT": "deit_tiny_patch16_224", "ViT-S-DeiT": "deit_small_patch16_224",
                "ViT-B-DeiT": "deit_base_patch16_224", "ViT-B-MAE": "vit_base_patch16_224.mae",
                "ViT-L-MAE": "vit_large_patch16_224.mae", "ViT-H-MAE": "vit_huge_patch14_224.mae"}
    assert set(examples) == {f.name for f in FAMILIES}
    for family, name in examples.items():
        model = meta_model(name)
        for flops, (prune, merge) in published()[family].items():
            reduced = apply_method(model, "diffrate", flops=float(flops))
            expected, n = [], reduced.num_tokens
            for p, m in zip(prune, merge):
                n = min(n, p, m)
                expected.append(n)
            assert reduced.schedule == expected, (family, flops)


def test_published_deit_small_runs():
    vit = timm.create_model("deit_small_patch16_224", pretrained=False).eval()
    reduced = apply_method(vit, "diffrate", flops="2.3")
    with torch.no_grad():
        assert reduced(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


# ---- bad input ------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "model, params, message",
    [
        ("deit_small_patch16_224", dict(flops=2.8), "Choose --flops from: 2.3, 2.5, 2.7, 2.9, 3.1"),
        ("deit_small_patch16_224", dict(flops=2.9, merge_kept=[197] * 12), "not both"),
        ("vit_small_patch16_384", dict(flops=2.9), "577 tokens"),
        ("deit_small_patch16_224", dict(prune_kept=[197] * 11), "11 entries but the model has 12 blocks"),
        ("deit_small_patch16_224", dict(merge_kept=[197] * 11 + [198]), "[198] lie outside 1..197"),
        ("deit_small_patch16_224", dict(prune_kept=[197] * 11 + [0]), "[0] lie outside 1..197"),
        ("deit_small_patch16_224", dict(merge_kept=[197, 1] + [197] * 10), "no token to merge into"),
    ],
)
def test_bad_input(model, params, message):
    with pytest.raises(ExporterError) as info:
        apply_method(meta_model(model), "diffrate", **params)
    assert message in str(info.value)


def test_default_is_the_readme_budget():
    model = meta_model("deit_small_patch16_224")
    assert apply_method(model, "diffrate").schedule == apply_method(model, "diffrate", flops=2.9).schedule


def test_no_schedule_for_average_pooling_vit_s():
    with pytest.raises(ExporterError, match="average pooling.*published families: ViT-T-DeiT"):
        apply_method(meta_model("vit_small_patch16_224", global_pool="avg"), "diffrate", flops=2.9)


def test_command_line_parsers():
    params = {p.name: p for p in get_method("diffrate").params}
    assert params["flops"].parse("2.9") == 2.9
    assert params["prune_kept"].parse("[197, 196,3]") == (197, 196, 3)
    with pytest.raises(ExporterError, match="'many' is not a number"):
        params["flops"].parse("many")


def test_average_pooling_needs_a_patch_token():
    with pytest.raises(ExporterError, match="only the class token after block 2"):
        apply_method(decisive_vit(0, global_pool="avg"), "diffrate", prune_kept=[65, 30, 1, 1, 1, 1])
