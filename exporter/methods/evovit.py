# SPDX-License-Identifier: Apache-2.0
"""Evo-ViT: slow-fast token evolution. Informative tokens go through the blocks; the others wait as
placeholders and move with the increments of one representative token.

Paper: Xu et al., "Evo-ViT: Slow-Fast Token Evolution for Dynamic Vision Transformer", AAAI 2022
(https://arxiv.org/abs/2108.01390). Code: github.com/YifanXu74/Evo-ViT.

What this module computes (the paper's description, made precise):

- Global class attention g over the patch tokens. `a` is the class token's attention row over the
  patch tokens, mean over heads, fp32. Each block before the first stage sets g = a. Inside a stage,
  the informative tokens fold theirs in: g <- alpha * g + (1 - alpha) * a. Placeholders keep their
  last g, and the representative token's own attention is not tracked.
- At each stage start (`stages`, default blocks 4 and 8) all patch tokens are ranked by g. At the
  second and later stages that means all of them again, since placeholders are carried along.
  The top `round(keep_rate * patch tokens)` become informative (98 of 196 at keep_rate 0.5) and the
  rest become placeholders.
- Inside a stage every block runs on [class, informative..., rep], where rep = Σ_j (g_j / Σ g) x_j
  over the placeholders (the slow path). Every placeholder receives the increments that rep
  receives from the attention residual and from the MLP residual (the fast path). rep is built
  once per stage and then carried as a token. Because the weights sum to one and every placeholder
  gets rep's increments, that is the same token as rebuilding it from the updated placeholders at
  every block. The placeholders receive the increments summed over the stage, at its end.
- The full token set leaves each stage and the model, every patch token in its original place
  (so the indices a stage records are patch positions, comparable across stages and runtimes).
  The model's own pooling and head are used (the class token for DeiT).
- `schedule` lists the tokens that go through each block's attention: patches + 1 before the
  first stage, keep + 2 (class, informative, rep) inside the stages.
- keep_rate 1 leaves the model dense.

The authors' DeiT code differs from the paper (issue #3 there): it has no representative token,
leaves placeholders unchanged, sums the heads instead of averaging them (which ranks the same),
rounds the keep count down (int) and classifies the mean of the patch tokens. Their LeViT code
does have the representative token and the increment broadcast.

Export: the authors' sort becomes a TopK with constant K = keep. The informative tokens are gathered
(one Gather of rows). rep is a mask-weighted sum, with the mask built from the one-hot of the kept
indices. The informative outputs go back to their places through the one-hot MatMul
(`scatter_add_tokens`), not through in-place slice writes (ScatterND). Everything else is slices and cat.
"""
from __future__ import annotations

import torch

from ..errors import ExporterError
from .. import ops
from ..ops.reference import gather_tokens, placeholders, scatter_add_tokens
from .base import (
    Choices,
    Param,
    ReducedViT,
    attend,
    attn_residual,
    check_blocks,
    check_vit,
    int_list,
    mlp_residual,
    register,
    to_fraction,
)


class EvoViT(ReducedViT):
    method = "evovit"

    def __init__(self, vit, keep_rate: float, stages: tuple[int, ...], alpha: float, keep: int):
        patches, depth = vit.patch_embed.num_patches, len(vit.blocks)
        params = dict(keep_rate=keep_rate, stages=stages, alpha=alpha)
        stages = stages if keep < patches else ()  # nothing to leave out: dense
        first = stages[0] if stages else depth
        super().__init__(vit, [patches + 1] * first + [keep + 2] * (depth - first), params)
        self.stages, self.alpha, self.keep = stages, alpha, keep

    def forward_blocks(self, x: torch.Tensor, choices: Choices):
        blocks = self.vit.blocks
        if not self.stages:
            return blocks(x), None
        first = self.stages[0]
        for blk in blocks[: first - 1]:
            x = blk(x)
        x, _, g = run_block(blocks[first - 1], x, score=True)  # g = a: only the last block before matters
        bounds = [*self.stages, len(blocks)]
        for start, end in zip(bounds, bounds[1:]):
            # g after the last stage ranks nothing, so that stage does not track it
            x, g = self.stage(blocks[start:end], x, g, end < len(blocks), choices)
        return x, None

    def stage(self, blocks, x: torch.Tensor, g: torch.Tensor, score: bool, choices: Choices):
        """Run `blocks` on [class, top-`keep` tokens by g, rep]; return all tokens (in their original
        places) and, when `score`, g updated through the stage."""
        k = self.keep
        choice = choices.choose(ops.choose_evovit_select, g, k)
        y, idx = ops.apply_evovit_select(x, choice)  # informative tokens, best first
        choices.add(idx)
        g_inf = gather_tokens(g, idx) if score else None
        moved = 0  # the sum of rep's increments so far
        for blk in blocks:
            y, step, a = run_block(blk, y, score)
            moved = moved + step
            if score:
                g_inf = self.alpha * g_inf + (1 - self.alpha) * a[:, :k]
        # placeholders move with rep; informative tokens go back to their places (exact selections)
        x = ops.evovit_restore(x, y, moved, idx)
        if score:
            g = scatter_add_tokens((placeholders(idx, g.shape[1], g.dtype) * g).unsqueeze(-1), idx, g_inf.unsqueeze(-1)).squeeze(-1)
        return x, g


def run_block(blk, x: torch.Tensor, score: bool):
    """One timm Block. Returns its output, the last token's increment (attention + MLP residual)
    and, when `score`, the class token's fp32 attention over the other tokens, mean over heads."""
    att = attend(blk.attn, blk.norm1(x), cls_row=score)
    step = attn_residual(blk, att.out)
    x = x + step
    step2 = mlp_residual(blk, x)
    a = att.cls_row[:, :, 1:].mean(dim=1) if score else None
    return x + step2, step[:, -1:] + step2[:, -1:], a


@register(
    "evovit",
    "slow-fast token evolution: top global-class-attention tokens go through each stage, the rest follow "
    "a representative token",
    params=[
        Param("keep_rate", float, 0.5, "fraction of patch tokens informative in each stage (rounded), in (0, 1]"),
        Param("stages", int_list, (4, 8), "blocks that start a stage, strictly increasing, first >= 1"),
        Param("alpha", float, 0.5, "weight of the previous global class attention in its update, in [0, 1]"),
    ],
)
def apply(model, keep_rate: float = 0.5, stages=(4, 8), alpha: float = 0.5) -> EvoViT:
    check_vit(model)
    keep_rate = to_fraction(keep_rate, "keep_rate")
    depth = len(model.blocks)
    stages = check_blocks(stages, depth, "stages")
    if not stages or list(stages) != sorted(set(stages)) or stages[0] < 1:
        raise ExporterError(
            f"stages must be a non-empty, strictly increasing list of blocks starting at 1 or later "
            f"(the ranking needs a block's attention before it), got {list(stages)}.",
            "Pass --stages like 4,8 (or use --method none for the dense model).",
        )
    if not 0.0 <= float(alpha) <= 1.0:
        raise ExporterError(f"alpha must be in [0, 1], got {alpha}.", "Pass --alpha between 0 and 1, e.g. 0.5.")
    patches = model.patch_embed.num_patches
    keep = round(keep_rate * patches)
    if keep < 1:
        raise ExporterError(
            f"keep_rate {keep_rate} keeps no informative token of {patches} patch tokens.",
            f"Pass --keep-rate of at least 1/{patches} = {1 / patches:.4g}.",
        )
    return EvoViT(model, keep_rate, stages, float(alpha), keep)
