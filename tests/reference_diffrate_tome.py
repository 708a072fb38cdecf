# SPDX-License-Identifier: Apache-2.0
"""Plain re-implementations of DiffRate's and ToMe's inference, the way the authors' code computes it.

Explicit attention softmax with +log(size), torch.sort/argsort, scatter_reduce 'mean'/'sum' and in-place
-inf writes, on a timm VisionTransformer's own weights (LayerScale included, which the authors' block
overrides ignore but our modules honour). Besides logits they log, per reduction, what was chosen (in
original token ids for DiffRate, in the authors' A/B index frames for ToMe) and the margins by which it was
chosen, so tests can insist on decisive inputs before comparing discrete choices.

Also: `assert_tensorrt_friendly` for exported graphs.
"""
from __future__ import annotations

import math

import torch
from timm.models.vision_transformer import VisionTransformer


def _embed(vit, img):
    return vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(img))))


def _attention(attn, x, size):
    """The authors' `Attention.forward`: explicit softmax, + log(size) before it; returns (out, map, k)."""
    B, N, C = x.shape
    q, k, v = attn.qkv(x).reshape(B, N, 3, attn.num_heads, C // attn.num_heads).permute(2, 0, 3, 1, 4)
    logits = (q @ k.transpose(-2, -1)) * attn.scale
    if size is not None:
        logits = logits + size.log()[:, None, None, :, 0]
    weights = logits.softmax(dim=-1)
    out = attn.proj((weights @ v).transpose(1, 2).reshape(B, N, C))
    return out, weights, k


def _head(vit, x, size, divide_by):
    x = vit.norm(x)
    if vit.global_pool == "token":
        pooled = x[:, 0]
    else:
        pooled = (x * size)[:, 1:].sum(dim=1) / divide_by
    return vit.head(vit.fc_norm(pooled))


def _gap(sorted_desc: torch.Tensor, at: int, relative: bool) -> torch.Tensor:
    """Gap between ranks at-1 and at of each row of a descending-sorted [B, K] tensor."""
    gap = sorted_desc[:, at - 1] - sorted_desc[:, at]
    return gap / sorted_desc[:, at - 1].abs() if relative else gap


@torch.no_grad()
def diffrate(vit, img, prune_kept, merge_kept, diagnostics=True):
    """Logits and, per block, {'kept': ids after pruning, 'src': ids merged, 'dst': their destinations' ids,
    'rank_gaps': relative class-attention gaps at the prune/merge cuts, 'match_gaps': top1 - top2 cosine}.
    Without `diagnostics` only what the authors compute (no gaps), as the GPU benchmark times it."""
    x = _embed(vit, img)
    B, N, C = x.shape
    size = torch.ones(B, N, 1, device=x.device, dtype=x.dtype)
    ids = torch.arange(N, device=x.device).expand(B, N)
    log = []
    for block, prune, merge in zip(vit.blocks, prune_kept, merge_kept):
        out, attn, _ = _attention(block.attn, block.norm1(x), size)
        x = x + block.ls1(out)
        cls_attn = attn[:, :, 0, 1:].mean(dim=1)
        score, idx = torch.sort(cls_attn, descending=True)
        idx = torch.cat([torch.zeros(B, 1, dtype=torch.long, device=x.device), idx + 1], dim=1)
        x = torch.gather(x, 1, idx[..., None].expand(-1, -1, C))
        size, ids = torch.gather(size, 1, idx[..., None]), torch.gather(ids, 1, idx)
        n = x.shape[1]
        entry = {"rank_gaps": [], "match_gaps": None}
        if 1 < prune < n and diagnostics:
            entry["rank_gaps"].append(_gap(score, prune - 1, relative=True))
        x, size, ids = x[:, :prune], size[:, :prune], ids[:, :prune]
        entry["kept"] = ids
        if merge < prune:
            if merge < x.shape[1] and diagnostics:
                entry["rank_gaps"].append(_gap(score, merge - 1, relative=True))
            metric = x / x.norm(dim=-1, keepdim=True)
            similarity = metric[:, merge:] @ metric[:, :merge].transpose(-1, -2)
            similarity[..., :, 0] = -math.inf
            node_max, node_idx = similarity.max(dim=-1)
            if merge > 2 and diagnostics:
                top2 = similarity.topk(2, dim=-1).values
                entry["match_gaps"] = top2[..., 0] - top2[..., 1]
            dst_idx = node_idx[..., None]
            entry["src"], entry["dst"] = ids[:, merge:], torch.gather(ids[:, :merge], 1, node_idx)
            x = x[:, :merge].scatter_reduce(-2, dst_idx.expand(-1, -1, C), x[:, merge:], reduce="mean")
            size = torch.cat([size[:, :merge], size[:, merge:] * node_max[..., None]], dim=1)
            size = size[:, :merge].scatter_reduce(-2, dst_idx, size[:, merge:], reduce="sum")
            ids = ids[:, :merge]
        log.append(entry)
        x = x + block.ls2(block.mlp(block.norm2(x)))
    return _head(vit, x, size, size[:, 1:].sum(dim=1)), log


@torch.no_grad()
def tome(vit, img, r_per_block, prop_attn=True, diagnostics=True):
    """Logits and, per merging block, {'src': src_idx, 'dst': dst_idx (the authors' A/B frames),
    'rank_gap': best-match cosine gap at the r cut, 'match_gaps': top1 - top2 cosine of each merged token}.
    Without `diagnostics` no gaps are computed."""
    x = _embed(vit, img)
    T = x.shape[1] - 1
    size = None
    log = []
    for block, r in zip(vit.blocks, r_per_block):
        out, _, k = _attention(block.attn, block.norm1(x), size if prop_attn else None)
        x = x + block.ls1(out)
        r = min(r, (x.shape[1] - 1) // 2)
        if r > 0:
            metric = k.mean(dim=1)
            metric = metric / metric.norm(dim=-1, keepdim=True)
            a, b = metric[..., ::2, :], metric[..., 1::2, :]
            scores = a @ b.transpose(-1, -2)
            scores[..., 0, :] = -math.inf
            node_max, node_idx = scores.max(dim=-1)
            edge_idx = node_max.argsort(dim=-1, descending=True)[..., None]
            unm_idx, src_idx = edge_idx[..., r:, :], edge_idx[..., :r, :]
            dst_idx = node_idx[..., None].gather(dim=-2, index=src_idx)
            unm_idx = unm_idx.sort(dim=1)[0]
            entry = {"src": src_idx[..., 0], "dst": dst_idx[..., 0], "rank_gap": None, "match_gaps": None}
            ranked = node_max.sort(dim=-1, descending=True).values if diagnostics else None
            if r < a.shape[1] - 1 and diagnostics:
                entry["rank_gap"] = _gap(ranked, r, relative=False)
            if b.shape[1] > 1 and diagnostics:
                top2 = scores[:, 1:].topk(2, dim=-1).values
                entry["match_gaps"] = torch.gather(top2[..., 0] - top2[..., 1], 1, src_idx[..., 0] - 1)
            log.append(entry)

            def merge(t):
                src, dst = t[..., ::2, :], t[..., 1::2, :]
                n, t1, c = src.shape
                unm = src.gather(dim=-2, index=unm_idx.expand(n, t1 - r, c))
                src = src.gather(dim=-2, index=src_idx.expand(n, r, c))
                dst = dst.scatter_reduce(-2, dst_idx.expand(n, r, c), src, reduce="sum")
                return torch.cat([unm, dst], dim=1)

            if size is None:
                size = torch.ones_like(x[..., 0, None])
            x = merge(x * size)
            size = merge(size)
            x = x / size
        x = x + block.ls2(block.mlp(block.norm2(x)))
    if size is None:
        size = torch.ones_like(x[..., :1])
    return _head(vit, x, size, T), log


# ---- checks on exported graphs ---------------------------------------------------------------

def assert_tensorrt_friendly(model) -> None:
    """No scatter (with or without reduction: ToMe's -inf write would be a ScatterND), no NonZero, no
    control flow, and every TopK's K a constant: what TensorRT 8.5-11 import without plugins."""
    graph = model.graph
    constants = {t.name for t in graph.initializer}
    constants.update(node.output[0] for node in graph.node if node.op_type == "Constant")
    ops = [node.op_type for node in graph.node]
    bad = sorted({op for op in ops if op.startswith("Scatter") or op in ("NonZero", "If", "Loop")})
    assert not bad, f"export contains {bad}"
    topks = [node for node in graph.node if node.op_type == "TopK"]
    assert topks, "expected TopK nodes"
    for node in topks:
        assert node.input[1] in constants, f"TopK {node.name} has a computed K ({node.input[1]})"
        assert all(a.i == 1 for a in node.attribute if a.name == "sorted")
