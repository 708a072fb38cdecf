# SPDX-License-Identifier: Apache-2.0
"""One block's latency per token count on a runtime, for DiffRate's latency-targeted search
(`methods.latency_cost` fits it, `search --target-latency-ms` uses it).

The runtimes (`RUNTIMES`): onnxruntime CPU, timing static fp32 ONNX graphs of the modules below; PyTorch eager on the
CPU; and on a GPU, the modules in fp16 replayed as CUDA graphs (what `bench` times as PyTorch's CUDA-graph rows). Every
module is the model's own blocks (their weights, batch `batch`): the attention halves of
all blocks in a row, and the MLP halves, at each token count of the grid (all blocks, not one block called again and
again: one block's weights stay in the cache, the model's do not), divided by the depth; a graph that only slices
(the per-call overhead, subtracted); the part outside the blocks (patch and position embedding, final norm, head);
and three whole exported models that calibrate the halves' sum (`latency_cost.whole_fit`: a constant, a scale on the
halves and the reduction's own cost): the dense model, a DiffRate model removing two tokens per block, and one
removing tokens evenly down to 2 (`halving`, about half the blocks' work, where latency budgets lie). The block
graphs take the same [batch, tokens, width] input and slice the first n tokens, so one `timing.Runtime` process holds
them all and `timing.interleaved` times them in turn, round by round, as `bench` times bundles; each value is the
median over every call of every round.
"""
from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..export.onnx_export import export_onnx
from ..methods import apply_method
from ..methods.base import attn_residual, mlp_residual
from ..methods.latency_cost import LatencyTable, blocks_ms, whole_fit
from . import machine
from .timing import Runtime, interleaved


class _Halves(nn.Module):
    """The attention halves or the MLP halves of `blocks`, one after the other, on the first `tokens` tokens; with
    `half` None, the slice alone (the call's overhead)."""

    def __init__(self, blocks: nn.Module, half, tokens: int):
        super().__init__()
        self.blocks, self.half, self.tokens = blocks, half, tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, : self.tokens]
        for block in self.blocks if self.half else ():
            if self.half == "attention":
                x = x + attn_residual(block, block.attn(block.norm1(x)))
            else:
                x = x + mlp_residual(block, x)
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
    return sorted({round(float(n)) for n in np.linspace(2, tokens, points)})


def halving(tokens: int, depth: int) -> tuple[list[int], list[int]]:
    """DiffRate counts (prune_kept, merge_kept) removing tokens evenly after the first block, down to 2 leaving the
    last, half of each block's removed tokens pruned and half merged: blocks that keep about half the tokens on
    average, like the schedules a latency budget gives."""
    prune, merge, n = [tokens], [tokens], tokens
    for i in range(1, depth):
        out = tokens - round(i * (tokens - 2) / (depth - 1))
        prune.append(n - (n - out) // 2)
        merge.append(out)
        n = out
    return prune, merge


def _export(module: nn.Module, example: torch.Tensor, path: Path) -> Path:
    torch.onnx.export(module.eval(), (example,), str(path), input_names=["x"], output_names=["y"], opset_version=18,
                      dynamo=False)
    return path


RUNTIMES = {  # search --runtime -> the timing harness's kind (`bench.timing.Runtime`), as bench times bundles
    "onnxruntime": "ort",  # static fp32 ONNX graphs, onnxruntime CPU
    "pytorch": "torch",  # the modules themselves, eager on the CPU
    "pytorch-cuda-graph": "torch-cuda-graph-fp16",  # the modules in fp16 on the GPU, replays of a CUDA graph per call
}


def measure(vit: nn.Module, batch: int, threads: int, rounds: int = 5, iterations: int = 20,
            points: int = 9, log: Callable[[str], None] = print, runtime: str = "onnxruntime") -> LatencyTable:
    """The fitted `LatencyTable` of `vit` (a timm ViT; its first block stands for every block) on `runtime` (one of
    RUNTIMES: onnxruntime times exported graphs of the same modules the PyTorch runtimes time as they are)."""
    kind = RUNTIMES[runtime]
    vit = vit.eval()
    tokens = vit.patch_embed.num_patches + vit.num_prefix_tokens
    width, depth = vit.embed_dim, len(vit.blocks)
    counts = grid(tokens, points)
    # every block after the first prunes one token and merges one; and the blocks' tokens halved on average
    two = ([tokens] + [tokens - 2 * i + 1 for i in range(1, depth)],
           [tokens] + [tokens - 2 * i for i in range(1, depth)])
    reduced = {name: apply_method(vit, "diffrate", prune_kept=prune, merge_kept=merge)
               for name, (prune, merge) in {"reducing": two, "halving": halving(tokens, depth)}.items()}
    x = np.random.default_rng(0).standard_normal((batch, tokens, width), dtype=np.float32)
    images = np.random.default_rng(0).standard_normal((batch, 3, *vit.patch_embed.img_size), dtype=np.float32)
    halves = {(half, n): _Halves(vit.blocks, half, n) for half in ("attention", "mlp") for n in counts}
    halves["overhead", counts[0]] = _Halves(vit.blocks, None, counts[0])
    whole = {"outside": _Outside(vit), "dense": vit, **reduced}
    with tempfile.TemporaryDirectory(prefix="block-latency-") as tmp, torch.no_grad():
        if kind == "ort":
            folder = Path(tmp)
            log(f"exporting {len(halves) + len(whole)} graphs")
            example = torch.from_numpy(x)
            halves = {key: _export(m, example, folder / f"{key[0]}-{key[1]}.onnx") for key, m in halves.items()}
            size = tuple(vit.patch_embed.img_size)
            whole = {"outside": _export(whole.pop("outside"), torch.from_numpy(images), folder / "outside.onnx"),
                     **{name: export_onnx(m, folder / f"{name}.onnx", size, (batch,) * 3) for name, m in whole.items()}}
        with Runtime(kind, halves, x, threads) as blocks, Runtime(kind, whole, images, threads) as models:
            timers = {key: (lambda n, key=key: blocks.latencies(key, n)) for key in halves}
            timers.update({key: (lambda n, key=key: models.latencies(key, n)) for key in whole})
            times = interleaved(timers, rounds, iterations, log)
    median = {key: statistics.median(ms for r in rounds_ for ms in r) for key, rounds_ in times.items()}
    overhead = median["overhead", counts[0]]
    table = LatencyTable(
        runtime=runtime, batch=batch, threads=threads, grid=counts,
        attention_ms=[(median["attention", n] - overhead) / depth for n in counts],
        mlp_ms=[(median["mlp", n] - overhead) / depth for n in counts],
        outside_ms=median["outside"], overhead_ms=overhead, rounds=rounds, iterations=iterations,
        machine=machine.describe(threads),
    ).fitted()
    table.dense_ms, table.reducing_ms, table.halving_ms = median["dense"], median["reducing"], median["halving"]
    parts = [blocks_ms(table, tokens, [tokens] * depth)] + [blocks_ms(table, tokens, reduced[name].schedule)
                                                            for name in ("reducing", "halving")]
    whole = [median[name] for name in ("dense", "reducing", "halving")]
    table.fixed_ms, table.scale, table.reduction_ms = whole_fit(*zip(*parts), whole)
    return table
