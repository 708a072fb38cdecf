# SPDX-License-Identifier: Apache-2.0
"""EViT: keep the patch tokens the class token attends to most, fuse the rest into one token.

Paper: Liang et al., "Not All Patches are What You Need: Expediting Vision Transformers via Token
Reorganizations", ICLR 2022 (https://arxiv.org/abs/2202.07800). Code: github.com/youweiliang/evit
(`evit.py` Attention/Block, `helpers.complement_idx`).

At each block in `locations`, after the attention residual and before the MLP, the block keeps the
`ceil(keep_rate * (N - 1))` patch tokens with the largest class-token attention (mean over heads),
in descending-score order as the authors' `topk(sorted=True)` gives them. With `fuse`, one more
token follows them: the sum of the dropped tokens weighted by their (unnormalised) attention. The
fused token is an ordinary patch token at later locations. As in the authors' code, a location
whose keep count is every patch token (always the case at keep_rate 1) is left dense, without a
fused token. DeiT-S, keep_rate 0.7, fused: 197 -> 140 (block 3) -> 100 (6) -> 72 (9) tokens.

Export: K is a Python int (TopK with a constant K), the kept tokens are one Gather of rows, and the
authors' complement index (scatter + sort with a data-dependent K) becomes a mask-weighted sum
Σ(1 - m)·a·x, with m the one-hot of the kept indices. That sum is exact and, unlike
Σall - Σkept, has no fp16 cancellation. Scores are the fp32 class-token row from `attend`.
"""
from __future__ import annotations

import math

import torch

from ..errors import ExporterError
from .. import ops
from ..ops.reference import gather_tokens
from .base import (
    Choices,
    Param,
    ReducedViT,
    attend,
    attn_residual,
    boolean,
    check_blocks,
    check_vit,
    int_list,
    mlp_residual,
    register,
    to_fraction,
)


def plan(num_tokens: int, depth: int, keep_rate: float, locations: tuple[int, ...], fuse: bool):
    """({block: patch tokens kept}, tokens leaving every block incl. the class token)."""
    keep, schedule, n = {}, [], num_tokens
    for i in range(depth):
        if i in locations:
            k = math.ceil(keep_rate * (n - 1))  # the authors' rounding
            if k < n - 1:  # keeping all (always so at keep_rate 1): the block stays dense
                keep[i] = k
                n = 1 + k + int(fuse)
        schedule.append(n)
    return keep, schedule


class EViT(ReducedViT):
    method = "evit"

    def __init__(self, vit, keep_rate: float, locations: tuple[int, ...], fuse: bool):
        keep, schedule = plan(vit.patch_embed.num_patches + 1, len(vit.blocks), keep_rate, locations, fuse)
        super().__init__(vit, schedule, dict(keep_rate=keep_rate, locations=locations, fuse=fuse))
        self.keep = keep  # {block: patch tokens kept there}
        self.fuse = fuse

    def forward_blocks(self, x: torch.Tensor, choices: Choices):
        # When tracing, follow which token each position holds: patch ids 0..P-1, and -1-j for the
        # token fused at reduction j. Recording identities rather than positions means two runtimes
        # that order near-equal kept tokens differently still record the same choice.
        ids = torch.arange(x.shape[1] - 1, device=x.device).expand(x.shape[0], -1) if choices.traced else None
        for i, blk in enumerate(self.vit.blocks):
            if i in self.keep:
                x, ids = self.reduce(blk, x, self.keep[i], ids, choices)
            else:
                x = blk(x)
        return x, None

    def reduce(self, blk, x: torch.Tensor, k: int, ids, choices: Choices):
        """One block that keeps `k` patch tokens (plus the fused one) between attention and MLP."""
        att = attend(blk.attn, blk.norm1(x), cls_row=True)
        x = x + attn_residual(blk, att.out)
        score = att.cls_row[:, :, 1:].mean(dim=1)  # [B, N-1], fp32
        # a replayed run's choice is the token identities it kept: where they are here
        choice = choices.choose(ops.choose_topk_prune, score, k,
                                located=lambda kept: (ids[:, None, :] == kept[:, :, None]).float().argmax(dim=-1))
        x, idx = ops.apply_topk_prune(x, choice, self.fuse)
        if ids is not None:
            ids = gather_tokens(ids, idx)
            choices.add(ids)
            if self.fuse:
                ids = torch.cat([ids, torch.full_like(ids[:, :1], -len(choices.kept))], dim=1)
        return x + mlp_residual(blk, x), ids


@register(
    "evit",
    "keep the top class-attention patch tokens at chosen blocks, fuse the rest into one token",
    params=[
        Param("keep_rate", float, 0.7, "fraction of patch tokens kept at each location (ceil), in (0, 1]"),
        Param("locations", int_list, (3, 6, 9), "blocks that reduce tokens, strictly increasing"),
        Param("fuse", boolean, True, "append one token fusing the dropped ones (attention-weighted sum)"),
    ],
)
def apply(model, keep_rate: float = 0.7, locations=(3, 6, 9), fuse: bool = True) -> EViT:
    check_vit(model)
    keep_rate = to_fraction(keep_rate, "keep_rate")
    locations = check_blocks(locations, len(model.blocks), "locations")
    if not locations or list(locations) != sorted(set(locations)):
        raise ExporterError(
            f"locations must be a non-empty, strictly increasing list of blocks, got {list(locations)}.",
            "Pass --locations like 3,6,9 (or use --method none for the dense model).",
        )
    return EViT(model, keep_rate, locations, bool(fuse))
