# SPDX-License-Identifier: Apache-2.0
"""One block's latency per token count on onnxruntime CPU, for DiffRate's latency-targeted search
(`methods.latency_cost` fits it, `search --target-latency-ms` uses it).

Every graph is a small static ONNX graph of the model's own first block (its weights, batch `batch`): the attention
half and the MLP half at each token count of the grid, a graph that only slices (the per-call overhead, subtracted
from the halves), and the part outside the blocks (patch and position embedding, final norm, head) once. The block
graphs all take the same [batch, tokens, width] input and slice the first n tokens, so one `timing.Runtime` process
holds them all and `timing.interleaved` times them in turn, round by round, as `bench` times bundles; each value is
the median over every call of every round.
"""
from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..methods.base import attn_residual, mlp_residual
from ..methods.latency_cost import LatencyTable
from . import machine
from .timing import Runtime, interleaved


class _Half(nn.Module):
    """The attention half or the MLP half of `block` on the first `tokens` tokens; with `half` None, the slice
    alone (the call's overhead)."""

    def __init__(self, block: nn.Module, half, tokens: int):
        super().__init__()
        self.block, self.half, self.tokens = block, half, tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, : self.tokens]
        if self.half == "attention":
            return x + attn_residual(self.block, self.block.attn(self.block.norm1(x)))
        if self.half == "mlp":
            return x + mlp_residual(self.block, x)
        return x


class _Outside(nn.Module):
    """Everything of the dense model but its blocks."""

    def __init__(self, vit: nn.Module):
        super().__init__()
        self.vit = vit

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        vit = self.vit
        x = vit.norm_pre(vit._pos_embed(vit.patch_embed(images)))
        return vit.forward_head(vit.norm(x))


def grid(tokens: int, points: int = 9) -> list[int]:
    """`points` token counts from 2 (the class token and one patch) to `tokens`, evenly spaced."""
    return sorted({int(round(n)) for n in np.linspace(2, tokens, points)})


def _export(module: nn.Module, example: torch.Tensor, path: Path) -> Path:
    torch.onnx.export(module.eval(), (example,), str(path), input_names=["x"], output_names=["y"], opset_version=18,
                      dynamo=False)
    return path


def measure(vit: nn.Module, batch: int, threads: int, rounds: int = 5, iterations: int = 20,
            points: int = 9, log: Callable[[str], None] = print) -> LatencyTable:
    """The fitted `LatencyTable` of `vit` (a timm ViT; its first block stands for every block) on onnxruntime."""
    vit = vit.eval()
    tokens = vit.patch_embed.num_patches + vit.num_prefix_tokens
    width = vit.embed_dim
    counts = grid(tokens, points)
    block = vit.blocks[0]
    x = np.random.default_rng(0).standard_normal((batch, tokens, width), dtype=np.float32)
    images = np.random.default_rng(0).standard_normal((batch, 3, *vit.patch_embed.img_size), dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="block-latency-") as tmp, torch.no_grad():
        folder = Path(tmp)
        log(f"exporting {2 * len(counts) + 2} graphs of one block at {len(counts)} token counts")
        example = torch.from_numpy(x)
        paths = {(half, n): _export(_Half(block, half, n), example, folder / f"{half}-{n}.onnx")
                 for half in ("attention", "mlp") for n in counts}
        paths["overhead", counts[0]] = _export(_Half(block, None, counts[0]), example, folder / "overhead.onnx")
        outside = _export(_Outside(vit), torch.from_numpy(images), folder / "outside.onnx")
        with Runtime("ort", paths, x, threads) as blocks, Runtime("ort", {"outside": outside}, images, threads) as rest:
            timers = {key: (lambda n, key=key: blocks.latencies(key, n)) for key in paths}
            timers["outside"] = lambda n: rest.latencies("outside", n)
            times = interleaved(timers, rounds, iterations, log)
    median = {key: statistics.median(ms for r in rounds_ for ms in r) for key, rounds_ in times.items()}
    overhead = median["overhead", counts[0]]
    return LatencyTable(
        runtime="onnxruntime", batch=batch, threads=threads, grid=counts,
        attention_ms=[median["attention", n] - overhead for n in counts],
        mlp_ms=[median["mlp", n] - overhead for n in counts],
        outside_ms=median["outside"], overhead_ms=overhead, rounds=rounds, iterations=iterations,
        machine=machine.describe(threads),
    ).fitted()

