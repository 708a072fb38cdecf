# SPDX-License-Identifier: Apache-2.0
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
1/32 px exact at 32–64. So the offset conv, the grid math and the bilinear sampling run in fp32 whatever
the input's dtype (in a half-precision model and its fp16 ONNX graph, Casts around them); only the
convolution over the sampled taps runs in the input's dtype.
"""
from __future__ import annotations

from typing import Optional, Tuple

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
    return _deform_conv2d(x, offset, weight, bias, _pair(stride), _pair(padding), _pair(dilation))


def _deform_conv2d(
        x: torch.Tensor,
        offset: torch.Tensor,
        weight: torch.Tensor,
        bias: Optional[torch.Tensor],
        stride: Tuple[int, int],
        padding: Tuple[int, int],
        dilation: Tuple[int, int],
) -> torch.Tensor:
    """`deform_conv2d` with pairs only (TorchScript cannot narrow an int-or-pair argument).

    Shapes are read by index, not unpacked, so torch.fx can trace it."""
    b, h, w = x.shape[0], x.shape[2], x.shape[3]
    kh, kw = weight.shape[2], weight.shape[3]
    ho, wo = offset.shape[2], offset.shape[3]
    sh, sw = stride
    ph, pw = padding
    dh, dw = dilation
    # Positions and sampling in fp32 at least, whatever x's dtype (see the module's NOTE fp16).
    fp = torch.promote_types(x.dtype, torch.float32)
    offset = offset.to(fp)
    # Undeformed tap positions in input pixels, laid out like the sampled map: [Ho·kh, Wo·kw].
    dev = x.device
    rows = (torch.arange(ho, device=dev) * sh - ph)[:, None] + torch.arange(kh, device=dev)[None, :] * dh
    cols = (torch.arange(wo, device=dev) * sw - pw)[:, None] + torch.arange(kw, device=dev)[None, :] * dw
    rows = rows.reshape(ho * kh, 1).to(fp)
    cols = cols.reshape(1, wo * kw).to(fp)
    # [B, kh, kw, 2, Ho, Wo] -> per shift [B, Ho, kh, Wo, kw] -> [B, Ho·kh, Wo·kw] (rank ≤ 6 throughout).
    shift = offset.reshape(b, kh, kw, 2, ho, wo)
    dy = shift[:, :, :, 0].permute(0, 3, 1, 4, 2).reshape(b, ho * kh, wo * kw)
    dx = shift[:, :, :, 1].permute(0, 3, 1, 4, 2).reshape(b, ho * kh, wo * kw)
    # Pixel p -> normalised (2p + 1) / size - 1 (align_corners=False), defined for any size >= 1.
    gy = (2 * (rows + dy) + 1) / h - 1
    gx = (2 * (cols + dx) + 1) / w - 1
    grid = torch.stack((gx, gy), dim=-1)
    sampled = F.grid_sample(x.to(fp), grid, mode="bilinear", padding_mode="zeros", align_corners=False).to(x.dtype)
    groups = x.shape[1] // weight.shape[1]
    return F.conv2d(sampled, weight, bias, stride=(kh, kw), groups=groups)


class DeformConv2dPack(nn.Module):
    """Deformable conv whose offsets come from a plain conv over the same window (DCNv1 "pack").

    Parameter names (`weight`, `bias`, `conv_offset.*`) and the zero-initialised offsets follow the
    authors' `mm_modules/DCN/modules/deform_conv2d.py::DeformConv2dPack`, so their checkpoints load.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0):
        super().__init__()
        self.kernel_size: Tuple[int, int] = _pair(kernel_size)
        self.stride: Tuple[int, int] = _pair(stride)
        self.padding: Tuple[int, int] = _pair(padding)
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
        # The offsets are positions: computed in fp32 (see the module's NOTE fp16).
        fp = torch.promote_types(x.dtype, torch.float32)
        bias = self.conv_offset.bias
        bias = None if bias is None else bias.to(fp)
        offset = F.conv2d(x.to(fp), self.conv_offset.weight.to(fp), bias, self.stride, self.padding)
        return _deform_conv2d(x, offset, self.weight, self.bias, self.stride, self.padding, (1, 1))


class DTM(nn.Module):
    """Deformable token merging: tokens [B, H·W, C] -> [B, H/2·W/2, 2C] via a 2×2/2 deformable conv + BN + GELU."""

    def __init__(self, dim: int):
        super().__init__()
        self.dconv = DeformConv2dPack(dim, dim * 2, kernel_size=2, stride=2)
        self.norm_layer = nn.BatchNorm2d(dim * 2)
        self.act_layer = nn.GELU()

    def forward(self, x: torch.Tensor, size: Tuple[int, int]) -> Tuple[torch.Tensor, Tuple[int, int]]:
        h, w = size
        x = x.reshape(x.shape[0], h, w, x.shape[2]).permute(0, 3, 1, 2)
        x = self.act_layer(self.norm_layer(self.dconv(x)))
        return x.flatten(2).transpose(1, 2), (h // 2, w // 2)
