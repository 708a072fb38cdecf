# SPDX-License-Identifier: Apache-2.0
"""HiLo attention (Pan, Cai, Zhuang: "Fast Vision Transformers with HiLo Attention", NeurIPS 2022,
https://arxiv.org/abs/2205.13213; official code ziplab/LITv2 `classification/models/attentions.py`).

The heads of one attention layer are split in two groups:
- Hi-Fi, (1 − α) of the heads: attention inside non-overlapping s×s windows (local, high frequencies);
- Lo-Fi, α of the heads: every query attends to keys/values taken from the map average-pooled by s
  (global, low frequencies).
Their outputs, each with its own projection, are concatenated along channels (Hi-Fi first).

Faithful to the authors where it matters for checkpoints and numerics: the head split
`l_heads = int(num_heads · α)`, parameter names (`h_qkv`, `h_proj`, `l_q`, `l_kv`, `l_proj`),
s = 1 meaning plain multi-head self-attention through the Lo-Fi path, and maps whose sides are not
multiples of s zero-padded at the bottom/right and cropped afterwards, as their detection and
segmentation backbones do (padded tokens are attended to, unmasked, exactly like theirs).

The Hi-Fi window attention (partition, padding, heads, attention, un-partition) is the token op
`exporter.ops.hilo_attention`: inline standard ops by default (reshapes/transposes of rank ≤ 6, the batch
its own axis, so the only symbolic dimension in the graph is the batch), one `HiLoAttention` plugin node
in a plugin graph, a fused kernel on a GPU. Lo-Fi stays standard ops: a plain attention on pooled keys,
which TensorRT fuses itself.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function
from torch import nn

from .. import ops
from ..errors import ExporterError

__all__ = ["HiLo", "split_heads"]


def split_heads(dim: int, num_heads: int, window_size: int, alpha: float) -> tuple[int, int]:
    """(Lo-Fi heads, Hi-Fi heads) the way the authors split them; raises ExporterError on impossible settings."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ExporterError(
            f"HiLo alpha {alpha!r} is outside [0, 1]: alpha is the share of heads doing Lo-Fi attention.",
            "Use a value in [0, 1]; the authors use 0.9.")
    if isinstance(window_size, bool) or not isinstance(window_size, int) or window_size < 1:
        raise ExporterError(
            f"HiLo window size {window_size!r} is not a positive integer.",
            "Use an integer >= 1: 2 as the authors do, or 1 for plain global attention.")
    if num_heads < 1 or dim % num_heads:
        raise ExporterError(
            f"HiLo cannot split {dim} channels into {num_heads} heads of equal width.",
            "Choose a number of heads that divides the channel count.")
    if window_size == 1:  # a 1×1 window is no local attention at all: all heads are global (the authors' rule)
        return num_heads, 0
    l_heads = int(num_heads * alpha)
    return l_heads, num_heads - l_heads


@register_notrace_function  # timm's fx tracer: a leaf (its checks branch on sizes)
def _check_map(n: int, h: int, w: int, ws: int) -> None:
    """Raise ExporterError unless `n` tokens form the h×w map and a ws×ws window fits in it."""
    if n != h * w:
        raise ExporterError(f"HiLo got {n} tokens for a {h}×{w} map.", "Pass the map size the tokens come from.")
    if ws > h or ws > w:
        raise ExporterError(
            f"HiLo window size {ws} does not fit the {h}×{w} feature map it is applied to.",
            f"Use a window size of at most {min(h, w)}, or a larger image.")


@register_notrace_function
def _pad_to_windows(x: torch.Tensor, ws: int) -> torch.Tensor:
    """[B, H, W, C] zero-padded at the bottom/right to multiples of ws (unchanged when they are)."""
    pad_b, pad_r = -x.shape[1] % ws, -x.shape[2] % ws
    if pad_b > 0 or pad_r > 0:
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    return x


@register_notrace_function
@torch.jit.ignore  # TorchScript calls it in Python: the op layer dispatches on lowering and device
def _window_attention(qkv: torch.Tensor, bias: Optional[torch.Tensor], size: Tuple[int, int], window: int, heads: int,
                      scale: float) -> torch.Tensor:
    """`ops.hilo_attention` on the unpadded map's q/k/v, padding tokens projecting to `bias` (or 0)."""
    pad = bias if bias is not None else qkv.new_zeros(qkv.shape[-1])
    return ops.hilo_attention(qkv, pad, size[0], size[1], window, heads, scale)


# TorchScript cannot resolve this module's string annotations (future import) for an ignored function: real types
_window_attention.__annotations__ = {"qkv": torch.Tensor, "bias": Optional[torch.Tensor], "size": Tuple[int, int],
                                     "window": int, "heads": int, "scale": float, "return": torch.Tensor}

# torch.fx.symbolic_trace without timm's tracer: the same functions as leaves
torch.fx.wrap("_check_map")
torch.fx.wrap("_pad_to_windows")
torch.fx.wrap("_window_attention")


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    # Written out (not SDPA) so the graph has the scaled-Q MatMul-Softmax-MatMul pattern TensorRT fuses.
    return ((q * scale) @ k.transpose(-2, -1)).softmax(dim=-1) @ v


class HiLo(nn.Module):
    """HiLo attention on a [B, H·W, C] token map.

    Args:
        dim: channels.
        num_heads: heads before the split.
        qkv_bias: bias in the q/k/v projections.
        qk_scale: attention scale; head_dim ** -0.5 when None.
        window_size: s, the Hi-Fi window side and the Lo-Fi pooling factor.
        alpha: share of heads given to Lo-Fi.
    """

    # Constants for TorchScript: the branch of a missing path is not compiled.
    __constants__ = ["has_hifi", "has_lofi", "pooled"]

    def __init__(
            self,
            dim: int,
            num_heads: int = 8,
            qkv_bias: bool = False,
            qk_scale: float | None = None,
            window_size: int = 2,
            alpha: float = 0.5,
    ):
        super().__init__()
        self.l_heads, self.h_heads = split_heads(dim, num_heads, window_size, alpha)
        self.head_dim = dim // num_heads
        self.l_dim, self.h_dim = self.l_heads * self.head_dim, self.h_heads * self.head_dim
        self.dim, self.num_heads, self.ws, self.alpha = dim, num_heads, window_size, alpha
        self.scale = qk_scale or self.head_dim ** -0.5
        self.has_hifi, self.has_lofi, self.pooled = self.h_heads > 0, self.l_heads > 0, window_size > 1
        if self.l_heads:
            if window_size > 1:
                self.sr = nn.AvgPool2d(kernel_size=window_size, stride=window_size)
            self.l_q = nn.Linear(dim, self.l_dim, bias=qkv_bias)
            self.l_kv = nn.Linear(dim, self.l_dim * 2, bias=qkv_bias)
            self.l_proj = nn.Linear(self.l_dim, self.l_dim)
        if self.h_heads:
            self.h_qkv = nn.Linear(dim, self.h_dim * 3, bias=qkv_bias)
            self.h_proj = nn.Linear(self.h_dim, self.h_dim)

    def hifi(self, x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        """Attention inside each s×s window: [B, H·W, C] -> [B, H·W, h_dim].

        The projections are per token, so q/k/v are projected on the unpadded map, the window op pads with
        what a zero token projects to (the bias), and the output projection runs on the map's own tokens.
        """
        out = _window_attention(self.h_qkv(x), self.h_qkv.bias, size, self.ws, self.h_heads, self.scale)
        return self.h_proj(out)

    def lofi(self, x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        """Every query against keys/values of the s×s average-pooled map: [B, H·W, C] -> [B, H·W, l_dim].

        Queries come from the unpadded map (padded ones would be cropped); the pooling sees the zero padding.
        """
        b, n, c = x.shape[0], x.shape[1], x.shape[2]
        q = self.l_q(x).reshape(b, n, self.l_heads, self.head_dim).transpose(1, 2)
        if self.pooled:
            grid = _pad_to_windows(x.reshape(b, size[0], size[1], c), self.ws)
            pooled = self.sr(grid.permute(0, 3, 1, 2)).flatten(2).transpose(1, 2)
        else:
            pooled = x
        kv = self.l_kv(pooled).reshape(b, -1, 2, self.l_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = _attend(q, kv[0], kv[1], self.scale).transpose(1, 2).reshape(b, n, self.l_dim)
        return self.l_proj(out)

    def forward(self, x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        h, w = size
        n = x.shape[1]
        _check_map(n, h, w, self.ws)
        if self.has_hifi and self.has_lofi:
            return torch.cat([self.hifi(x, size), self.lofi(x, size)], dim=-1)
        if self.has_hifi:
            return self.hifi(x, size)
        return self.lofi(x, size)
