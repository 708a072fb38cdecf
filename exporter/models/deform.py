"""Deformable convolution written in standard ONNX ops, and LITv2's deformable token merging (DTM).

LITv2 (ziplab/LITv2, `classification/models/patch_embed.py::DTM`) merges 2×2 tokens with a DCNv1
deformable convolution from a custom CUDA extension (`mm_modules/DCN`, an autograd.Function with no
ONNX symbolic), which no exporter can trace. Two exportable routes exist:

- `torchvision.ops.deform_conv2d` → ONNX `DeformConv`. Checked with torch 2.14 / torchvision 0.29: the
  dynamo exporter writes `DeformConv` even at opset 18, where it does not exist (onnxruntime rejects the
  model); at opset 19 onnxruntime runs it. TensorRT's ONNX parser maps `DeformConv` to the
  `ModulatedDeformConv2d` plugin from TensorRT 10.1 on (onnx-tensorrt docs/operators.md, 10.1 GA
  changelog), so it needs the plugin library; TensorRT-RTX 1.7's parser has no such plugin and fails
  ("Plugin not found"). TensorRT 10.0 and 8.x do not import it at all.
- what this module does: sample the input at every kernel tap's deformed position with `grid_sample`
  (ONNX `GridSample`, opset 16; TensorRT ≥ 8.5 as a native layer, FP32/FP16; TensorRT-RTX parses and
  builds it), laid out so that tap (ki, kj) of output (i, j) lands at pixel (i·kh + ki, j·kw + kj), then
  run an ordinary convolution with kernel = stride = the kernel size. That is the deformable
  convolution exactly, for any kernel, stride, padding and dilation.

Numerics: bilinear sampling with zeros outside the map is what torchvision's kernel and the authors'
CUDA kernel compute (a point outside (-1, H) × (-1, W) gives 0, out-of-range corners count as 0). The
only difference is rounding: positions go through grid_sample's normalised coordinates, which moves a
sample by at most a few ulp of the map size (~1e-6 px at 56²).

NOTE fp16: the sampling positions are pixel coordinates up to the map size; in fp16 they are only
1/32 px exact at 32–64. Keep the offset conv and the grid math in fp32 when converting a graph to fp16.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

__all__ = ["deform_conv2d", "DeformConv2dPack", "DTM"]


def deform_conv2d(
        x: torch.Tensor,
        offset: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
) -> torch.Tensor:
    """DCNv1 (one offset group, no modulation mask), numerically `torchvision.ops.deform_conv2d`.

    Args:
        x: input, [B, C, H, W].
        offset: [B, 2·kh·kw, Ho, Wo]; channel 2k is the row (y) shift and 2k+1 the column (x) shift of
            tap k = ki·kw + kj, the layout of torchvision and of the authors' DCN kernel.
        weight: [O, C/groups, kh, kw].
    """
    b, _, h, w = x.shape
    _, _, kh, kw = weight.shape
    _, _, ho, wo = offset.shape
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    # Undeformed tap positions in input pixels, laid out like the sampled map: [Ho·kh, Wo·kw].
    dev = x.device
    rows = (torch.arange(ho, device=dev) * sh - ph)[:, None] + torch.arange(kh, device=dev)[None, :] * dh
    cols = (torch.arange(wo, device=dev) * sw - pw)[:, None] + torch.arange(kw, device=dev)[None, :] * dw
    rows = rows.reshape(ho * kh, 1).to(x.dtype)
    cols = cols.reshape(1, wo * kw).to(x.dtype)
    # [B, kh, kw, 2, Ho, Wo] -> per shift [B, Ho, kh, Wo, kw] -> [B, Ho·kh, Wo·kw] (rank ≤ 6 throughout).
    shift = offset.reshape(b, kh, kw, 2, ho, wo)
    dy = shift[:, :, :, 0].permute(0, 3, 1, 4, 2).reshape(b, ho * kh, wo * kw)
    dx = shift[:, :, :, 1].permute(0, 3, 1, 4, 2).reshape(b, ho * kh, wo * kw)
    # Pixel p -> normalised (2p + 1) / size - 1 (align_corners=False), defined for any size >= 1.
    gy = (2 * (rows + dy) + 1) / h - 1
    gx = (2 * (cols + dx) + 1) / w - 1
    grid = torch.stack((gx, gy), dim=-1)
    sampled = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    groups = x.shape[1] // weight.shape[1]
    return F.conv2d(sampled, weight, bias, stride=(kh, kw), groups=groups)


class DeformConv2dPack(nn.Module):
    """Deformable conv whose offsets come from a plain conv over the same window (DCNv1 "pack").

    Parameter names (`weight`, `bias`, `conv_offset.*`) and the zero-initialised offsets follow the
    authors' `mm_modules/DCN/modules/deform_conv2d.py::DeformConv2dPack`, so their checkpoints load.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0):
        super().__init__()
        self.kernel_size, self.stride, self.padding = _pair(kernel_size), _pair(stride), _pair(padding)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels))
        kh, kw = self.kernel_size
        self.conv_offset = nn.Conv2d(in_channels, 2 * kh * kw, self.kernel_size, self.stride, self.padding)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Same as the authors: default conv init for the kernel, zero offsets (a plain conv at start).
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)
        bound = 1 / (self.weight[0].numel() ** 0.5)
        nn.init.uniform_(self.bias, -bound, bound)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return deform_conv2d(x, self.conv_offset(x), self.weight, self.bias, self.stride, self.padding)


class DTM(nn.Module):
    """Deformable token merging: tokens [B, H·W, C] -> [B, H/2·W/2, 2C] via a 2×2/2 deformable conv + BN + GELU."""

    def __init__(self, dim: int):
        super().__init__()
        self.dconv = DeformConv2dPack(dim, dim * 2, kernel_size=2, stride=2)
        self.norm_layer = nn.BatchNorm2d(dim * 2)
        self.act_layer = nn.GELU()

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
        h, w = size
        b, _, c = x.shape
        x = x.reshape(b, h, w, c).permute(0, 3, 1, 2)
        x = self.act_layer(self.norm_layer(self.dconv(x)))
        return x.flatten(2).transpose(1, 2), (h // 2, w // 2)
