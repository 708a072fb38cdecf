# SPDX-License-Identifier: Apache-2.0
"""DiffRate: prune by class attention, then merge by similarity, in every block.

Chen et al., "DiffRate: Differentiable Compression Rate for Efficient Vision Transformers", ICCV 2023
(arXiv 2305.17997); official code https://github.com/OpenGVLab/DiffRate (inference path of
`DiffRate/patch/deit.py`, `DiffRate/merge.py` and, for average pooling, `DiffRate/patch/mae.py`).

In every block, after the attention residual and before the MLP:
1. prune: rank the patch tokens by the class token's attention row (mean over heads; the row includes the
   +log(size) proportional-attention bias) and keep the class token plus the best `prune_kept[l] - 1`;
2. merge: every token beyond the first `merge_kept[l]` goes to its most cosine-similar head token (hidden
   states; never the class token) as the unweighted mean of the destination and its sources; the source's
   size, scaled by that similarity, is added to the destination's size, which enters attention as +log(size).
Tokens leaving block l: N_l = min(N_{l-1}, prune_kept[l], merge_kept[l]). The counts are the published,
searched ones (`exporter/data/diffrate_compression_rates.json`, selected by model family and `flops`) or
explicit per-block lists.

Where this differs from the authors' code, and why no result they compute changes:
- A TopK with constant K replaces their full sort, and blocks that reduce nothing skip it. Attention and MLP
  are permutation-equivariant and every reducing block re-ranks all tokens by its own class attention, so
  the skipped reordering can only change how exact ties are broken (and the last-ulp rounding of sums).
- Their `scatter_reduce('mean', include_self=True)` is written as x_p + sum_i (x_i - x_p) / (1 + count_p),
  the same mean, summed by a one-hot MatMul: ONNX has no mean reduction and the dynamo exporter silently
  writes it as a plain scatter.
- log(size) is taken of max(size, smallest normal float32). Their sizes can become <= 0 when a token's best
  cosine similarity is negative, and their log then gives -inf or NaN; here such a token gets a bias of
  about -87 (practically no attention, the limit of theirs as size -> 0+). Positive sizes are unchanged, and
  the raw sizes still accumulate and weight average pooling as theirs do.
- Similarities, sizes and the merged differences are fp32 also in an fp16 graph (which adds the differences
  to x_p in fp16), and LayerScale (ls1/ls2) is honoured; their block
  override ignores it. Their `forward(x, return_flop=True)` returning (logits, flops) does not arise: the
  timm modules are wrapped, not patched.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Optional, Sequence

import torch
from torch import nn

from ..errors import ExporterError
from .. import ops
from ..ops.reference import gather_tokens, log_size
from .schedule import counts_for, describe, pin, read
from .base import (
    Choices,
    Param,
    ReducedViT,
    attend,
    attn_residual,
    check_vit,
    int_list,
    mlp_residual,
    register,
)

SCHEDULES = "diffrate_compression_rates.json"


@dataclass(frozen=True)
class Family:
    """The models one set of published schedules was searched on (a key of the JSON)."""

    name: str
    depth: int
    embed_dim: int
    tokens: int  # class token + patches at the searched resolution
    pool: str  # timm `global_pool` of the searched models
    recipe: str  # "deit" or "mae": the weights the search ran with


# CAFormer-S36 schedules are published too, but CAFormer is no timm VisionTransformer.
FAMILIES = (
    Family("ViT-T-DeiT", 12, 192, 197, "token", "deit"),
    Family("ViT-S-DeiT", 12, 384, 197, "token", "deit"),
    Family("ViT-B-DeiT", 12, 768, 197, "token", "deit"),
    Family("ViT-B-MAE", 12, 768, 197, "avg", "mae"),
    Family("ViT-L-MAE", 24, 1024, 197, "avg", "mae"),
    Family("ViT-H-MAE", 32, 1280, 257, "avg", "mae"),
)


@lru_cache(maxsize=1)
def published() -> dict[str, dict[str, tuple[Optional[tuple[int, ...]], tuple[int, ...]]]]:
    """{family: {flops: (prune_kept or None, merge_kept)}} from the authors' compression_rate.json."""
    text = resources.files("exporter").joinpath("data", SCHEDULES).read_text()

    def counts(value: str) -> Optional[tuple[int, ...]]:
        return None if value == "None" else tuple(json.loads(value))

    return {
        family: {flops: (counts(s["prune_kept_num"]), counts(s["merge_kept_num"])) for flops, s in table.items()}
        for family, table in json.loads(text).items()
    }


def _describe(depth: int, dim: int, tokens: int, pool: str) -> str:
    return f"{depth} blocks, width {dim}, {tokens} tokens, {'class-token' if pool == 'token' else 'average'} pooling"


def family_of(vit: nn.Module) -> Family:
    """The published family for `vit`, decided by its architecture rather than its name.

    Depth, width and token count must match. A class-token model may use any matching family (the class token
    is always kept, so schedules searched with average pooling stay valid); an average-pooling model only an
    average-pooling family (the DeiT schedules end at 3 tokens, which is no average). Among the candidates,
    the one searched with the same weights recipe wins (timm's `.mae` tag), then the one with the same pooling:
    deit_small* -> ViT-S-DeiT, vit_base_patch16_224.mae -> ViT-B-MAE, an avg-pool ViT-B -> ViT-B-MAE,
    vit_large_patch16_224 -> ViT-L-MAE.
    """
    depth, dim, pool = len(vit.blocks), vit.embed_dim, vit.global_pool
    tokens = vit.patch_embed.num_patches + vit.num_prefix_tokens
    recipe = "mae" if "mae" in str((getattr(vit, "pretrained_cfg", None) or {}).get("tag") or "") else "deit"
    matches = [
        f
        for f in FAMILIES
        if (f.depth, f.embed_dim, f.tokens) == (depth, dim, tokens) and (f.pool == pool or pool == "token")
    ]
    if not matches:
        known = "; ".join(f"{f.name} ({_describe(f.depth, f.embed_dim, f.tokens, f.pool)})" for f in FAMILIES)
        raise ExporterError(
            f"DiffRate published no schedule for this model ({_describe(depth, dim, tokens, pool)}); "
            f"published families: {known}.",
            "Pass --prune-kept and --merge-kept with one token count per block (class token included).",
        )
    return min(matches, key=lambda f: (f.recipe != recipe, f.pool != pool))


# The budget used when none is given: the one the DiffRate README's results table shows for each
# family (DeiT-S 2.9, DeiT-B 11.5, MAE B/L/H 11.5/42.3/103.4). ViT-T has none there; 0.8 keeps the
# same share of its dense FLOPs (about 63%) as DeiT-S at 2.9.
DEFAULT_FLOPS = {"ViT-T-DeiT": 0.8, "ViT-S-DeiT": 2.9, "ViT-B-DeiT": 11.5, "ViT-B-MAE": 11.5, "ViT-L-MAE": 42.3, "ViT-H-MAE": 103.4}


def published_schedule(vit: nn.Module, flops: float) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(prune_kept, merge_kept) published for `vit`'s family at `flops` GFLOPs."""
    family = family_of(vit)
    table = published()[family.name]
    available = ", ".join(table)
    for key, (prune, merge) in table.items():
        if abs(float(key) - float(flops)) < 1e-6:
            n = family.tokens
            return prune if prune is not None else (n,) * family.depth, merge
    raise ExporterError(
        f"DiffRate published no {family.name} schedule at {flops} GFLOPs.",
        f"Choose --flops from: {available}.",
    )


def _counts(values: Sequence[int], depth: int, tokens: int, name: str) -> tuple[int, ...]:
    values = tuple(int(v) for v in values)
    flag = "--" + name.replace("_", "-")
    if len(values) != depth:
        raise ExporterError(
            f"{flag} has {len(values)} entries but the model has {depth} blocks.",
            f"Give one token count per block ({depth} numbers, class token included).",
        )
    bad = [v for v in values if not 1 <= v <= tokens]
    if bad:
        raise ExporterError(
            f"{flag} counts {bad} lie outside 1..{tokens} (the model has {tokens} tokens, class token included).",
            f"Use counts between 1 and {tokens}.",
        )
    return values


@dataclass(frozen=True)
class Step:
    """What one reducing block does: keep `keep` tokens by class attention, then merge down to `merge`."""

    keep: int
    merge: Optional[int]  # None: no merging in this block


def plan(tokens: int, prune_kept: Sequence[int], merge_kept: Sequence[int]) -> tuple[list[Optional[Step]], list[int]]:
    """Per block: the Step (None where nothing is reduced) and the tokens leaving it."""
    steps, schedule, n = [], [], tokens
    for prune, merge in zip(prune_kept, merge_kept):
        keep = min(n, prune)
        out = min(keep, merge)
        if merge < keep and merge < 2:
            raise ExporterError(
                f"merge_kept {merge} leaves no token to merge into (the class token is never a destination).",
                "Keep at least 2 tokens (class token included) in every block that merges.",
            )
        steps.append(None if out == n else Step(keep, merge if merge < keep else None))
        schedule.append(out)
        n = out
    return steps, schedule


class DiffRateViT(ReducedViT):
    """DiffRate's inference path on a timm VisionTransformer (see the module docstring).

    `steps[l]` says what block l does. Each reduction records the kept patch positions (TopK over the class
    attention, best first, positions in the block's token sequence) and, when it merges, the head position
    each tail token went to.
    """

    method = "diffrate"

    def __init__(self, vit: nn.Module, prune_kept: Sequence[int], merge_kept: Sequence[int], params: dict):
        steps, schedule = plan(vit.patch_embed.num_patches + vit.num_prefix_tokens, prune_kept, merge_kept)
        super().__init__(vit, schedule, params)
        self.steps = steps

    def forward_blocks(self, x: torch.Tensor, choices: Choices) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        size = None  # [B, N] fp32, patches per token (similarity-weighted); None while all are 1
        for block, step in zip(self.vit.blocks, self.steps):
            bias = None if size is None else log_size(size)
            attended = attend(block.attn, block.norm1(x), bias=bias, cls_row=step is not None)
            x = x + attn_residual(block, attended.out)
            if step is not None:
                x, size = self._reduce(x, size, attended.cls_row[:, :, 1:].mean(dim=1), step, choices)
            x = x + mlp_residual(block, x)
        return x, size

    @staticmethod
    def _reduce(x: torch.Tensor, size: Optional[torch.Tensor], score: torch.Tensor, step: Step, choices: Choices):
        """Prune to the class token plus the `keep - 1` patches it attends to most (best first), then merge
        the tokens beyond `merge`; a block that only prunes is a `topk_prune` without a fused token. Records
        the kept positions (patch position + 1) and, when merging, the head position each tail token went to."""
        if step.keep == 1:
            return x[:, :1], None if size is None else size[:, :1]
        if step.merge is None:
            choice = choices.choose(ops.choose_topk_prune, score, step.keep - 1, located=lambda kept: kept - 1)
            x, idx = ops.apply_topk_prune(x, choice, False)
            choices.add(idx + 1)
            return x, None if size is None else gather_tokens(size, torch.cat([torch.zeros_like(idx[:, :1]), idx + 1], dim=1))
        choice = choices.choose(ops.choose_diffrate_reduce, x, score, step.keep, step.merge, records=2)
        x, size, idx, dst = ops.apply_diffrate_reduce(x, size, choice)
        choices.add(idx, dst)
        return x, size


def _flops(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ExporterError(
            f"--flops '{text}' is not a number.", "Pass the GFLOPs of a published schedule, e.g. 2.9."
        ) from None


@register(
    "diffrate",
    "prune by class attention, then merge by similarity, in every block (published per-layer counts)",
    params=[
        Param("flops", _flops, None, "GFLOPs of a published schedule for the model's family (default: the README's, e.g. 2.9 for DeiT-S)"),
        Param("prune_kept", int_list, None, "tokens kept by pruning after each block, class token included"),
        Param("merge_kept", int_list, None, "tokens kept by merging after each block, class token included"),
        Param("schedule", pin, None, "a schedule file written by `search --method diffrate` for this model and weights"),
    ],
    unbind=lambda params: _unbound(**params),
)
def apply(
    model: nn.Module,
    flops: Optional[float] = None,
    prune_kept: Optional[Sequence[int]] = None,
    merge_kept: Optional[Sequence[int]] = None,
    schedule: Optional[str | dict] = None,
) -> DiffRateViT:
    """DiffRate with a published schedule (`flops`), explicit counts (a missing list keeps every token) or a
    searched `schedule` file."""
    check_vit(model)
    depth, tokens = len(model.blocks), model.patch_embed.num_patches + model.num_prefix_tokens
    explicit = prune_kept is not None or merge_kept is not None
    given = [flag for flag, value in (("--flops", flops), ("--prune-kept/--merge-kept", explicit or None),
                                      ("--schedule", schedule)) if value is not None]
    if len(given) > 1:
        raise ExporterError(
            f"DiffRate got {' and '.join(given)}, which each choose the counts.",
            "Pass --flops (a published schedule), the per-block counts or --schedule (a searched one), not both.",
        )
    if schedule is not None:
        prune_kept, merge_kept = counts_for(schedule, model)
        explicit = True
    if explicit:
        prune_kept = _counts(prune_kept if prune_kept is not None else (tokens,) * depth, depth, tokens, "prune_kept")
        merge_kept = _counts(merge_kept if merge_kept is not None else (tokens,) * depth, depth, tokens, "merge_kept")
    else:
        flops = DEFAULT_FLOPS[family_of(model).name] if flops is None else flops
        prune_kept, merge_kept = published_schedule(model, flops)
    params = {"flops": flops, "prune_kept": prune_kept, "merge_kept": merge_kept,
              "schedule": describe(schedule) if isinstance(schedule, dict) else schedule}
    reduced = DiffRateViT(model, prune_kept, merge_kept, params)
    if model.global_pool == "avg" and min(reduced.schedule) < 2:
        raise ExporterError(
            f"The schedule leaves only the class token after block {reduced.schedule.index(1)}, "
            "but this model averages the patch tokens.",
            "Keep at least 2 tokens (class token included) in every block.",
        )
    return reduced


def _unbound(schedule: Optional[str | dict] = None, **params) -> dict:
    """The parameters with a searched schedule (bound to the weights it was searched on) replaced by its counts."""
    if schedule is None:
        return {**params, "schedule": None}
    record = read(schedule) if isinstance(schedule, str) else schedule
    return {**params, "schedule": None, "prune_kept": record["prune_kept"], "merge_kept": record["merge_kept"]}
