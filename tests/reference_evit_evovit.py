# SPDX-License-Identifier: Apache-2.0
"""Plain re-implementations of EViT and Evo-ViT inference, written the way the authors' code does
it (materialised attention maps, sort, scatter-based complement index, in-place writes), for
checking the export-friendly modules. The small timm ViTs and their inputs are `vits.py`'s.

Each reference returns (logits, kept indices per reduction, margins per reduction). Kept indices
are what the module records: EViT's index the tokens of that moment, Evo-ViT's are patch positions.
A margin is the smallest relative gap, over the batch, between the last kept score and the first
dropped one. Two implementations may only be required to agree on the kept set when that margin is
clearly larger than their numerical difference; `decisive_images` picks inputs where it is.
"""
from __future__ import annotations

import copy
import math

import onnx
import onnxruntime as ort
import torch

from exporter.export.fp16 import export_fp16
from exporter.checks.graph import lint
from exporter.export.onnx_export import export_onnx
from exporter.methods import Traced, apply_method
from exporter.ops import reference as token_ops
from vits import decisive_vit, images  # noqa: F401  (re-exported for the EViT and Evo-ViT tests)

PATCHES = 64  # decisive_vit()'s default: 8x8 patches, depth 6
FP32_MARGIN = 1e-4  # fp32 scores differ by ~1e-6 relative between these implementations and runtimes
FP16_MARGIN = 3e-2  # fp16 scores differ by up to ~0.7% relative from fp32 ones (see decisive_vit)
# (model config, batch, seed) for the reference comparisons: DeiT-like, LayerScale, average pooling
CASES = [({}, 1, 0), ({}, 3, 10), ({"init_values": 0.1}, 3, 20), ({"global_pool": "avg"}, 3, 30)]
CASE_IDS = ["deit-b1", "deit-b3", "layerscale-b3", "avgpool-b3"]


# ---- models ----------------------------------------------------------------------------------

def decisive_images(vit, reference, params: dict, batch: int, min_margin: float, seed: int = 0) -> torch.Tensor:
    """`batch` images (drawn from seeds `seed`, `seed` + 1, ...) whose every top-k cut has a relative
    score gap above `min_margin` under `reference`: inputs on which two correct implementations
    whose scores differ by less than that must keep the same tokens."""
    chosen = []
    for s in range(seed, seed + 200):
        img = images(vit, 1, s)
        if min(reference(vit, img, **params)[2], default=1.0) > min_margin:
            chosen.append(img)
            if len(chosen) == batch:
                return torch.cat(chosen)
    raise AssertionError(f"no {batch} decisive inputs (margin > {min_margin}) among 200 seeds")


def run(reduced, img):
    """(fp32 logits, recorded indices) of a reduced module, in the module's own precision."""
    with torch.no_grad():
        logits, *kept = reduced.forward_traced(img.to(next(reduced.parameters()).dtype))
    return logits.float(), kept


def assert_same_tokens(got, want):
    """Per reduction, the same set of tokens in every batch row (order inside a set is free)."""
    assert len(got) == len(want), "number of reductions"
    for layer, (a, b) in enumerate(zip(got, want)):
        assert a.shape == b.shape, f"reduction {layer}: kept {a.shape[1]} tokens, expected {b.shape[1]}"
        assert torch.equal(a.sort(dim=1).values, b.sort(dim=1).values), f"reduction {layer}: different kept tokens"


# ---- shared pieces ---------------------------------------------------------------------------

def embed(vit, img):
    return vit.norm_pre(vit._pos_embed(vit.patch_embed(img)))


def head(vit, x):
    """timm's own pooling and head on the final tokens."""
    return vit.forward_head(vit.norm(x))


def attention(blk, x):
    """(attention residual increment, softmax attention map [B, H, N, N]) with the map materialised."""
    a = blk.attn
    B, N, _ = x.shape
    qkv = a.qkv(blk.norm1(x)).reshape(B, N, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = a.q_norm(qkv[0]), a.k_norm(qkv[1]), qkv[2]
    attn = ((q @ k.transpose(-2, -1)) * a.scale).softmax(dim=-1)
    out = a.proj((attn @ v).transpose(1, 2).reshape(B, N, -1))
    return blk.ls1(out), attn


def mlp(blk, x):
    return blk.ls2(blk.mlp(blk.norm2(x)))


def margin(sorted_scores: torch.Tensor, k: int) -> float:
    gap = (sorted_scores[:, k - 1] - sorted_scores[:, k]) / sorted_scores[:, k - 1].abs()
    return gap.min().item()


def flat_gather(x, idx):
    """The authors' `easy_gather`: rows of the flattened [B*N, C] tensor with batch offsets."""
    B, N, C = x.shape
    offset = torch.arange(B, device=x.device).view(B, 1) * N
    return x.reshape(B * N, C)[(idx + offset).view(-1)].reshape(B, idx.shape[1], C)


# ---- EViT ------------------------------------------------------------------------------------

def evit_identities(kept, n, fuse):
    """Kept indices (positions in the token list of that moment) -> which tokens they are: patch
    positions 0..n-1, or -1-j for the token fused at reduction j. Sets of identities can be
    compared even where two runs order their kept tokens differently (near-equal scores)."""
    ids = torch.arange(n).repeat(kept[0].shape[0], 1) if kept else None
    out = []
    for j, idx in enumerate(kept):
        chosen = torch.gather(ids, 1, idx)
        out.append(chosen)
        ids = torch.cat([chosen, torch.full_like(chosen[:, :1], -1 - j)], dim=1) if fuse else chosen
    return out


def complement_idx(idx, n):
    """set(range(n)) - set(idx) per row, ascending: scatter zeros at the kept places, sort, drop
    the first k entries (the authors' construction)."""
    a = torch.arange(n, device=idx.device).expand(idx.shape[0], n)
    masked = torch.scatter(a, 1, idx, 0)
    compl, _ = torch.sort(masked, dim=1)
    return compl[:, idx.shape[1]:]


@torch.no_grad()
def evit(vit, img, keep_rate, locations, fuse, diagnostics=True):
    x = embed(vit, img)
    kept, margins = [], []
    for i, blk in enumerate(vit.blocks):
        B, N, C = x.shape
        step, attn = attention(blk, x)
        x = x + step
        left = math.ceil(keep_rate * (N - 1))
        if i in locations and keep_rate < 1 and left < N - 1:
            cls_attn = attn[:, :, 0, 1:].mean(dim=1)
            _, idx = torch.topk(cls_attn, left, dim=1, largest=True, sorted=True)
            if diagnostics:
                margins.append(margin(cls_attn.sort(dim=1, descending=True).values, left))
            kept.append(idx)
            others = x[:, 1:]
            tokens = [x[:, :1], torch.gather(others, 1, idx.unsqueeze(-1).expand(-1, -1, C))]
            if fuse:
                compl = complement_idx(idx, N - 1)
                dropped = torch.gather(others, 1, compl.unsqueeze(-1).expand(-1, -1, C))
                weight = torch.gather(cls_attn, 1, compl)
                tokens.append((dropped * weight.unsqueeze(-1)).sum(dim=1, keepdim=True))
            x = torch.cat(tokens, dim=1)
        x = x + mlp(blk, x)
    return head(vit, x), kept, margins


# ---- Evo-ViT (the paper's slow-fast update, as specified in exporter/methods/evovit.py) -------

@torch.no_grad()
def evovit(vit, img, keep_rate, stages, alpha, diagnostics=True):
    x = embed(vit, img).clone()
    n = x.shape[1] - 1
    k = round(keep_rate * n)
    if k == n:
        stages = ()
    kept, margins = [], []
    g = None
    position = torch.arange(n, device=x.device).repeat(x.shape[0], 1)  # original patch position of each carried token
    for i, blk in enumerate(vit.blocks):
        if i in stages:
            g, order = torch.sort(g, dim=1, descending=True)
            if diagnostics:
                margins.append(margin(g, k))
            position = torch.gather(position, 1, order)
            kept.append(position[:, :k])
            x[:, 1:] = flat_gather(x[:, 1:], order)
        if not stages or i < stages[0]:
            step, attn = attention(blk, x)
            x = x + step
            x = x + mlp(blk, x)
            g = attn[:, :, 0, 1:].mean(dim=1)
            continue
        # slow path: class, informative tokens and the representative of the placeholders
        weight = g[:, k:] / g[:, k:].sum(dim=1, keepdim=True)
        rep = (weight.unsqueeze(-1) * x[:, k + 1:]).sum(dim=1, keepdim=True)
        y = torch.cat([x[:, : k + 1], rep], dim=1)
        step, attn = attention(blk, y)
        y = y + step
        x[:, k + 1:] += step[:, -1:]  # fast path
        step = mlp(blk, y)
        y = y + step
        x[:, k + 1:] += step[:, -1:]
        x[:, : k + 1] = y[:, :-1]
        g[:, :k] = alpha * g[:, :k] + (1 - alpha) * attn[:, :, 0, 1: k + 1].mean(dim=1)
    return head(vit, x), kept, margins


# ---- exported graphs -------------------------------------------------------------------------

def static_topk_ks(model) -> list[int]:
    """The K of every TopK in an ONNX graph, after checking the graph is one TensorRT imports as is:
    no Scatter*, NonZero or control flow, and every K a constant (an initializer or Constant)."""
    from onnx import numpy_helper

    graph = model.graph
    forbidden = ("NonZero", "If", "Loop")
    bad = sorted({n.op_type for n in graph.node if n.op_type.startswith("Scatter") or n.op_type in forbidden})
    assert not bad, f"export contains {bad}"
    constants = {t.name: t for t in graph.initializer}
    constants.update({n.output[0]: n.attribute[0].t for n in graph.node if n.op_type == "Constant"})
    ks = []
    for n in graph.node:
        if n.op_type == "TopK":
            assert n.input[1] in constants, f"TopK {n.name} has a computed K ({n.input[1]})"
            assert all(a.i == 1 for a in n.attribute if a.name in ("sorted", "largest")), f"TopK {n.name} attributes"
            ks.append(int(numpy_helper.to_array(constants[n.input[1]]).reshape(-1)[0]))
    return ks


# ---- checks shared by test_evit.py and test_evovit.py ------------------------------------------

def check_fp16_keeps_fp32_tokens(monkeypatch, method: str, reference, params: dict, selections: int):
    """The half-precision module ranks fp32 scores (`selections` TopKs over 2 runs) and keeps the
    tokens the fp32 module keeps, on decisive inputs."""
    vit = decisive_vit(3)
    reduced = apply_method(vit, method, **params)
    score_dtypes = []

    def top_indices(scores, k):
        score_dtypes.append(scores.dtype)
        return torch.topk(scores, k, dim=-1).indices

    monkeypatch.setattr(token_ops, "top_indices", top_indices)
    img = decisive_images(vit, reference, params, 3, FP16_MARGIN, seed=30)
    logits32, ids32 = run(reduced, img)
    logits16, ids16 = run(copy.deepcopy(reduced).half(), img)
    assert score_dtypes == [torch.float32] * selections, "token scores must be fp32 in the half model too"
    assert_same_tokens(ids16, ids32)
    torch.testing.assert_close(logits16, logits32, atol=2e-2, rtol=0)


def check_onnx_parity(path, precision: str, method: str, reference, params: dict, topk_ks: list[int]):
    """The exported graph (dynamic batch) keeps the tokens PyTorch fp32 keeps, at batch 1 and 3."""
    vit = decisive_vit(4)
    reduced = apply_method(vit, method, **params)
    names = ["logits"] + [f"k{i}" for i in range(len(topk_ks))]
    if precision == "fp32":
        export_onnx(Traced(reduced), path, 64, batch=(1, 2, 4), output_names=names)
        margin, atol = FP32_MARGIN, 1e-4
    else:
        facts = export_fp16(Traced(reduced), path, img_size=64, batch=(1, 2, 4), output_names=names)
        assert facts["unguarded_selectors"] == [], "a TopK ranks fp16 scores"
        margin, atol = FP16_MARGIN, 2e-2
    assert lint(path) == []
    assert static_topk_ks(onnx.load(str(path), load_external_data=False)) == topk_ks
    session = ort.InferenceSession(str(path))
    for batch, seed in [(1, 40), (3, 50)]:
        img = decisive_images(vit, reference, params, batch, margin, seed)
        logits, *kept = session.run(None, {"input": img.numpy()})
        want, ids = run(reduced, img)
        assert_same_tokens([torch.from_numpy(k) for k in kept], ids)
        torch.testing.assert_close(torch.from_numpy(logits), want, atol=atol, rtol=0)
