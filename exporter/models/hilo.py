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

Export: every tensor keeps the batch as its own axis (no B·windows merge), so the only symbolic
dimension in the graph is the batch; the Hi-Fi window partition is reshapes/transposes of rank ≤ 6.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function
from torch import nn

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
def _crop(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """[B, H', W', C] cropped to its first h×w (unchanged when it is that size)."""
    if x.shape[1] != h or x.shape[2] != w:
        x = x[:, :h, :w]
    return x


# torch.fx.symbolic_trace without timm's tracer: the same functions as leaves
torch.fx.wrap("_check_map")
torch.fx.wrap("_pad_to_windows")
torch.fx.wrap("_crop")


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

    def hifi(self, x: torch.Tensor) -> torch.Tensor:
        """Attention inside each s×s window: [B, H, W, C] -> [B, H, W, h_dim] (H, W multiples of s)."""
        b, h, w = x.shape[0], x.shape[1], x.shape[2]
        s, hg, wg = self.ws, h // self.ws, w // self.ws
        # The projection is per token, so project first and partition the result.
        qkv = self.h_qkv(x).reshape(b, hg, s, wg, s, 3 * self.h_dim).transpose(2, 3)
        qkv = qkv.reshape(b, hg * wg, s * s, 3, self.h_heads, self.head_dim).permute(3, 0, 1, 4, 2, 5)
        out = _attend(qkv[0], qkv[1], qkv[2], self.scale)  # [B, windows, heads, s·s, head_dim]
        out = out.transpose(2, 3).reshape(b, hg, wg, s, s, self.h_dim).transpose(2, 3)
        return self.h_proj(out.reshape(b, h, w, self.h_dim))

    def lofi(self, x: torch.Tensor) -> torch.Tensor:
        """Every query against keys/values of the s×s average-pooled map: [B, H, W, C] -> [B, H, W, l_dim]."""
        b, h, w, c = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
        q = self.l_q(x).reshape(b, h * w, self.l_heads, self.head_dim).transpose(1, 2)
        if self.pooled:
            pooled = self.sr(x.permute(0, 3, 1, 2)).flatten(2).transpose(1, 2)
        else:
            pooled = x.reshape(b, h * w, c)
        kv = self.l_kv(pooled).reshape(b, -1, 2, self.l_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = _attend(q, kv[0], kv[1], self.scale).transpose(1, 2).reshape(b, h, w, self.l_dim)
        return self.l_proj(out)

    def forward(self, x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        h, w = size
        b, n, c = x.shape[0], x.shape[1], x.shape[2]
        _check_map(n, h, w, self.ws)
        x = _pad_to_windows(x.reshape(b, h, w, c), self.ws)
        if self.has_hifi and self.has_lofi:
            out = torch.cat([self.hifi(x), self.lofi(x)], dim=-1)
        elif self.has_hifi:
            out = self.hifi(x)
        else:
            out = self.lofi(x)
        return _crop(out, h, w).reshape(b, n, c)
