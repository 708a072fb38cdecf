# SPDX-License-Identifier: Apache-2.0
"""ToMe: bipartite soft matching merges r tokens in every block.

Bolya et al., "Token Merging: Your ViT But Faster", ICLR 2023 (arXiv 2210.09461); official code
https://github.com/facebookresearch/ToMe (`tome/merge.py` `bipartite_soft_matching`/`merge_wavg`,
`tome/patch/timm.py`, `tome/patch/mae.py`, `tome/utils.py` `parse_r`).

In every block with r > 0, after the attention residual and before the MLP: the keys averaged over heads are
split alternately into A (even positions, class token first) and B (odd); every A token but the class token
finds its most cosine-similar B token, and the r best-matched A tokens are merged into their B partners as a
size-weighted average. Output order: the unmerged A tokens in their original order, then all B tokens. r is
capped per block at (tokens - 1) // 2 as the authors do. Token sizes enter attention as +log(size)
(proportional attention) and weight average pooling.

Where this differs from the authors' code, and why no result they compute changes:
- TopKs with constant K replace their argsort and sort: one ranks every A token by its best match (the
  first r are merged), a second sorts the unmerged ones into position order, as their `unm_idx.sort()`.
- Their `scores[..., 0, :] = -inf` (a ScatterND) becomes a Where on the class token's best match: as in
  theirs, it is last in the ranking and never merged, since r <= (tokens - 1) // 2.
- Their `scatter_reduce('sum')` and division become x_p + sum_i s_i (x_i - x_p) / s'_p, the same weighted
  average, summed over the sources of a partner by a MatMul (exact; TensorRT <= 9 silently ignores the
  reduction of ScatterElements) and put in place by a gather. Sizes and merged tokens are computed in fp32
  also in an fp16 graph and rounded once. LayerScale (ls1/ls2) is honoured; their block override ignores it.
- Proportional attention follows the authors' defaults: on for class-token models (`patch/timm.py`), off for
  average-pooling (MAE-style) models (`patch/mae.py`); `prop_attn` overrides it.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import nn

from ..errors import ExporterError
from .. import ops
from .base import (
    Choices,
    Param,
    ReducedViT,
    attend,
    attn_residual,
    boolean,
    check_vit,
    int_list,
    mlp_residual,
    register,
)

RSpec = Union[int, Sequence[int], tuple[int, float], str]

_R_FORMS = "13 (every block), 13,12,11,... (per block) or 16:-1 (r:inflection)"


def parse_r(text: str) -> Union[int, list[int], tuple[int, float]]:
    """Command-line r: '13' -> 13; '13,12,11' -> [13, 12, 11] (per block); '16:-1' -> (16, -1.0).

    'R:INFLECTION' is the documented form of the authors' (r, inflection) pair; their Python spelling
    '(16,-1)' is accepted too.
    """
    value = text.strip()
    if ":" in value or value.startswith("("):
        parts = value.strip("()").replace(":", ",").split(",")
        try:
            r, inflection = parts
            return int(r), float(inflection)
        except ValueError:
            raise ExporterError(f"--r '{text}' is not an r:inflection pair.", f"Write r as {_R_FORMS}.") from None
    if "," in value or value.startswith("["):
        return list(int_list(value))
    try:
        return int(value)
    except ValueError:
        raise ExporterError(f"--r '{text}' is not a number of tokens.", f"Write r as {_R_FORMS}.") from None


def r_per_block(depth: int, r: RSpec) -> list[int]:
    """The authors' `parse_r`: a constant, an (r, inflection) linear schedule, or a per-block list.

    Inflection -1..+1 tilts the schedule: (r, 0) is constant, (r, -1) their "decreasing schedule" (2r down
    to 0). A list shorter than the model is padded with zeros, as theirs is.
    """
    if isinstance(r, str):
        r = parse_r(r)
    if isinstance(r, list):
        values = [int(v) for v in r]
        if len(values) > depth:
            raise ExporterError(
                f"--r lists {len(values)} values but the model has {depth} blocks.",
                f"Give at most {depth} values (missing blocks merge nothing).",
            )
        values += [0] * (depth - len(values))
    else:
        if isinstance(r, tuple):
            if len(r) != 2:
                raise ExporterError(
                    f"--r {r} is a tuple of {len(r)} values; a tuple means (r, inflection).",
                    "Pass a list for per-block values, or (r, inflection).",
                )
            r, inflection = int(r[0]), float(r[1])
            if not -1.0 <= inflection <= 1.0:
                raise ExporterError(f"ToMe inflection {inflection} lies outside -1..1.", "Use e.g. 16:-1 or 16:0.5.")
        else:
            r, inflection = int(r), 0.0
        low = int(r * (1.0 - inflection))
        step = (2 * r - 2 * low) / max(depth - 1, 1)
        values = [int(low + step * i) for i in range(depth)]
    if any(v < 0 for v in values):
        raise ExporterError(f"--r {values} has negative values.", "r counts tokens merged per block: use values >= 0.")
    return values


def capped(tokens: int, r: Sequence[int]) -> list[int]:
    """r per block after the authors' cap min(r, (t - 1) // 2), t being the tokens entering the block."""
    out = []
    for value in r:
        value = min(value, (tokens - 1) // 2)
        out.append(value)
        tokens -= value
    return out


class ToMeViT(ReducedViT):
    """ToMe on a timm VisionTransformer (see the module docstring).

    `r[l]` is the (capped) number of tokens block l merges. Each merge records the merged A positions (best
    match first; A = even positions, class token = 0) and the B position each went to, as the authors'
    `src_idx` and `dst_idx`.
    """

    method = "tome"

    def __init__(self, vit: nn.Module, r: Sequence[int], prop_attn: bool, params: dict):
        tokens = vit.patch_embed.num_patches + vit.num_prefix_tokens
        requested, r = list(r), capped(tokens, r)
        if r != requested:  # record what runs, and say so
            params = {**params, "r": r}
        super().__init__(vit, [tokens - sum(r[: l + 1]) for l in range(len(r))], params)
        self.r = r
        self.notes = [] if r == requested else [
            f"ToMe r {requested} capped to {r}: a block merges at most (tokens - 1) // 2 of its tokens"
        ]
        self.prop_attn = prop_attn

    def forward_blocks(self, x: torch.Tensor, choices: Choices) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        size = None  # [B, N] fp32 patches per token; None while all are 1
        for block, r in zip(self.vit.blocks, self.r):
            bias = size.log() if self.prop_attn and size is not None else None
            attended = attend(block.attn, block.norm1(x), bias=bias)
            x = x + attn_residual(block, attended.out)
            if r > 0:
                metric = attended.k.mean(dim=1)
                choice = choices.choose(ops.choose_tome_merge, metric, r, records=2)
                x, size, src, dst = ops.apply_tome_merge(x, size, choice)
                choices.add(src, dst)
            x = x + mlp_residual(block, x)
        return x, size


@register(
    "tome",
    "bipartite soft matching merges r tokens per block (size-weighted, proportional attention)",
    params=[
        Param("r", parse_r, 13, f"tokens merged per block: {_R_FORMS}"),
        Param(
            "prop_attn",
            boolean,
            None,
            "proportional attention (+log size); default: on for class-token, off for average-pooling models",
        ),
    ],
)
def apply(model: nn.Module, r: RSpec = 13, prop_attn: Optional[bool] = None) -> ToMeViT:
    """ToMe with r per block: an int, a per-block list, (r, inflection), or their command-line text."""
    check_vit(model)
    per_block = r_per_block(len(model.blocks), r)
    if prop_attn is None:
        prop_attn = model.global_pool == "token"
    return ToMeViT(model, per_block, bool(prop_attn), {"r": per_block, "prop_attn": bool(prop_attn)})
