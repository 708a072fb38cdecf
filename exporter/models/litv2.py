# SPDX-License-Identifier: Apache-2.0
"""LITv2 (Pan, Cai, Zhuang: "Fast Vision Transformers with HiLo Attention", NeurIPS 2022,
https://arxiv.org/abs/2205.13213; official code and weights: https://github.com/ziplab/LITv2, Apache-2.0).

A four-stage hierarchical ViT: stages 1–2 are ConvFFN blocks without attention (LayerNorm + an MLP with a
3×3 depthwise conv), stages 3–4 add HiLo attention (window 2 in stage 3, 1 = global MSA in stage 4,
α = 0.9), and deformable token merging (DTM) halves the map between stages.

Importing this module (or `exporter.models`) registers `litv2_small`, `litv2_medium` and `litv2_base` with
timm, so `timm.create_model("litv2_small", pretrained=False)` works, and they follow timm's model conventions:
default cfgs, `reset_classifier`, `forward_features` (NHWC, `output_fmt`) / `forward_head`, `feature_info`
and `forward_intermediates` for the four stages (so `features_only=True` works), TorchScript and torch.fx.

Module and parameter names follow `classification/models/{litv2,layers,blocks,attentions,patch_embed}.py` of the
official repo, so the released checkpoints (`litv2_s.pth` ...) load with `load_state_dict(..., strict=True)` without
remapping. NOTE: those files store the weights under the key 'model' (`torch.load(f)['model']`).

Differences from the official classification code, none of which changes the function:
- the deformable conv is `deform.deform_conv2d` (grid_sample + conv) instead of the authors' CUDA
  extension, so the model exports to ONNX and TensorRT;
- the map size travels with the tokens instead of being fixed at construction, and HiLo pads maps
  that are not multiples of its window (as the authors' detection backbone does);
- inputs whose sides are not multiples of the total stride (32) raise ExporterError.
"""
from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import List, Optional, Tuple, Union

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, register_notrace_function, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import nn
from torch.nn.modules.utils import _pair

from ..errors import ExporterError
from .deform import DTM
from .hilo import HiLo

__all__ = ["LITv2"]

Size = Tuple[int, int]


@register_notrace_function  # timm's fx tracer: a leaf (it branches on the input's size)
def _check_input(h: int, w: int, total_stride: int, windows: List[Tuple[int, int, int]]) -> None:
    """Raise ExporterError unless both sides are multiples of the total stride and every HiLo window
    (stage, stride, window) fits its map."""
    if h % total_stride != 0 or w % total_stride != 0:
        shown = f"{h}" if h == w else f"{h}×{w}"
        raise ExporterError(
            f"Image size {shown} is not divisible by the model's total stride {total_stride}.",
            f"Use a multiple of {total_stride}, e.g. 224.")
    for stage, stride, ws in windows:
        if ws > min(h, w) // stride:
            raise ExporterError(
                f"HiLo window size {ws} in stage {stage} does not fit its {h // stride}×{w // stride} feature map "
                f"at image size {h}×{w}.", f"Use a window size of at most {min(h, w) // stride} in that stage.")


torch.fx.wrap("_check_input")  # the same for torch.fx.symbolic_trace


class DWConv(nn.Module):
    """3×3 depthwise conv on tokens; its zero padding is LITv2's only positional encoding."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, bias=True, groups=dim)

    def forward(self, x: torch.Tensor, size: Size) -> torch.Tensor:
        x = self.dwconv(x.transpose(1, 2).reshape(x.shape[0], x.shape[2], size[0], size[1]))
        return x.flatten(2).transpose(1, 2)


class DWMlp(nn.Module):
    """fc1 → depthwise 3×3 → GELU → fc2."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = DWConv(hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor, size: Size) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x), size)))


class ConvFFNBlock(nn.Module):
    """Stages 1–2: the MLP half of a transformer block only (the official key names keep `norm2`)."""

    def __init__(self, dim: int, mlp_ratio: float, drop_path: float = 0.0):
        super().__init__()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = DWMlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, size: Size) -> torch.Tensor:
        return x + self.drop_path(self.mlp(self.norm2(x), size))


class HiLoBlock(ConvFFNBlock):
    """Stages 3–4: HiLo attention, then the ConvFFN (the official `Block`)."""

    def __init__(
            self,
            dim: int,
            mlp_ratio: float,
            drop_path: float = 0.0,
            num_heads: int = 1,
            qkv_bias: bool = True,
            qk_scale: float | None = None,
            window_size: int = 2,
            alpha: float = 0.9,
    ):
        super().__init__(dim, mlp_ratio, drop_path)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = HiLo(dim, num_heads, qkv_bias, qk_scale, window_size, alpha)

    def forward(self, x: torch.Tensor, size: Size) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), size))
        return x + self.drop_path(self.mlp(self.norm2(x), size))  # ConvFFNBlock's (TorchScript has no super())


class LITLayer(nn.Module):
    """One stage: its blocks, then (except in the last stage) a DTM that halves the map."""

    def __init__(
            self,
            dim: int,
            depth: int,
            mlp_ratio: float,
            drop_path: Sequence[float],
            downsample: bool,
            attn_args: dict | None = None,
    ):
        super().__init__()
        self.blocks = nn.ModuleList(
            HiLoBlock(dim, mlp_ratio, dp, **attn_args) if attn_args is not None else ConvFFNBlock(dim, mlp_ratio, dp)
            for dp in drop_path[:depth])
        self.downsample = DTM(dim) if downsample else None

    def forward(self, x: torch.Tensor, size: Size) -> Tuple[torch.Tensor, Size]:
        for blk in self.blocks:
            x = blk(x, size)
        if self.downsample is not None:
            x, size = self.downsample(x, size)
        return x, size


class PatchEmbed(nn.Module):
    """Non-overlapping patch × patch conv, then LayerNorm on the tokens. `img_size` records the size built for."""

    def __init__(self, img_size: Size, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.img_size = img_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Size]:
        x = self.proj(x)
        size = (x.shape[2], x.shape[3])
        return self.norm(x.flatten(2).transpose(1, 2)), size


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """The official checkpoints wrap the weights as {'model': state_dict, ...}; keys need no remapping."""
    return state_dict.get("model", state_dict)


class LITv2(nn.Module):
    """LITv2 classifier.

    Args:
        img_size: the size the model is built for; checked against the total stride and the windows.
        patch_size: stem stride.
        in_chans: input channels.
        num_classes: classifier outputs; 0 for features only.
        global_pool: 'avg' (mean over the map) or '' (no pooling: the head sees the NHWC map).
        embed_dim: stage-1 width; it doubles at every stage.
        depths: blocks per stage.
        num_heads: heads per stage (only stages with attention use them).
        mlp_ratio: MLP hidden width / width.
        qkv_bias: bias in the HiLo q/k/v projections.
        qk_scale: attention scale override.
        drop_path_rate: stochastic depth at the last block, linear from 0 (training only).
        has_msa: per stage, 1 for HiLo blocks, 0 for ConvFFN blocks.
        alpha: HiLo's Lo-Fi share of heads.
        local_ws: per-stage HiLo window s (1 = global attention; ignored where has_msa is 0).
        device: where the parameters are created (timm's factory argument).
        dtype: their dtype (timm's factory argument).
    """

    output_fmt = "NHWC"  # of forward_features, as timm's Swin

    exporter_family = "litv2"  # how exporter.models recognises a supported non-ViT model
    checkpoint_filter_fn = staticmethod(checkpoint_filter_fn)  # what exporter.models' checkpoint loader applies

    def __init__(
            self,
            img_size: int | Size = 224,
            patch_size: int = 4,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = "avg",
            embed_dim: int = 96,
            depths: Sequence[int] = (2, 2, 6, 2),
            num_heads: Sequence[int] = (3, 6, 12, 24),
            mlp_ratio: float = 4.0,
            qkv_bias: bool = True,
            qk_scale: float | None = None,
            drop_path_rate: float = 0.1,
            has_msa: Sequence[int] = (0, 0, 1, 1),
            alpha: float = 0.9,
            local_ws: Sequence[int] = (0, 0, 2, 1),
            device: Optional[Union[torch.device, str]] = None,
            dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        with torch.device(device) if device is not None else contextlib.nullcontext():
            self._build(img_size, patch_size, in_chans, num_classes, global_pool, embed_dim, depths, num_heads,
                        mlp_ratio, qkv_bias, qk_scale, drop_path_rate, has_msa, alpha, local_ws)
        if dtype is not None:
            self.to(dtype)

    def _build(self, img_size, patch_size, in_chans, num_classes, global_pool, embed_dim, depths, num_heads, mlp_ratio,
               qkv_bias, qk_scale, drop_path_rate, has_msa, alpha, local_ws) -> None:
        stages = len(depths)
        if not len(num_heads) == len(has_msa) == len(local_ws) == stages:
            raise ExporterError(
                f"LITv2 got {stages} stage depths but {len(num_heads)} head counts, {len(has_msa)} has_msa "
                f"flags and {len(local_ws)} window sizes.", "Give one value per stage for each.")
        if global_pool not in ("avg", ""):
            raise ExporterError(f"LITv2 global_pool {global_pool!r} is not supported.", "Use 'avg' or ''.")
        self.num_classes, self.global_pool, self.in_chans = num_classes, global_pool, in_chans
        self.num_features = self.head_hidden_size = embed_dim * 2 ** (stages - 1)
        self.total_stride = patch_size * 2 ** (stages - 1)
        # Each stage's output before its token merging (`forward_intermediates`), as timm describes features.
        self.feature_info = [
            dict(num_chs=embed_dim * 2 ** i, reduction=patch_size * 2 ** i, module=f"layers.{i}")
            for i in range(stages)]
        # (stage, stride, window) of every stage with HiLo: what check_img_size needs, known before building.
        self.hilo_windows = [(i + 1, patch_size * 2 ** i, local_ws[i]) for i in range(stages) if has_msa[i] == 1]
        self.check_img_size(img_size)
        self.patch_embed = PatchEmbed(_pair(img_size), patch_size, in_chans, embed_dim)
        n = sum(depths)
        dpr = [drop_path_rate * i / max(n - 1, 1) for i in range(n)]  # linear decay rule (torch.linspace)
        self.layers = nn.ModuleList(
            LITLayer(
                embed_dim * 2 ** i, depths[i], mlp_ratio, dpr[sum(depths[:i]):], downsample=i < stages - 1,
                attn_args=dict(num_heads=num_heads[i], qkv_bias=qkv_bias, qk_scale=qk_scale, window_size=local_ws[i],
                               alpha=alpha) if has_msa[i] == 1 else None)
            for i in range(stages))
        self.norm = nn.LayerNorm(self.num_features)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(_init_weights)

    @torch.jit.unused
    def check_img_size(self, img_size: int | Sequence[int]) -> None:
        """Raise ExporterError unless both sides are multiples of the total stride and every HiLo window fits."""
        h, w = _pair(img_size)
        _check_input(h, w, self.total_stride, self.hilo_windows)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A new head for `num_classes` (0: none), on the model's device and dtype; `global_pool` 'avg' or ''
        (None keeps the current pooling)."""
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise ExporterError(f"LITv2 global_pool {global_pool!r} is not supported.", "Use 'avg' or ''.")
            self.global_pool = global_pool
        self.num_classes = num_classes
        like = self.patch_embed.proj.weight
        self.head = (nn.Linear(self.num_features, num_classes, device=like.device, dtype=like.dtype)
                     if num_classes > 0 else nn.Identity())

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image [B, C, H, W] -> normed last-stage map [B, H/32, W/32, num_features] (NHWC)."""
        _check_input(x.shape[2], x.shape[3], self.total_stride, self.hilo_windows)
        x, size = self.patch_embed(x)
        for layer in self.layers:
            x, size = layer(x, size)
        return self.norm(x).reshape(x.shape[0], size[0], size[1], x.shape[2])

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=(1, 2))
        return x if pre_logits else self.head(x)

    @torch.jit.ignore
    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Each selected stage's output before its token merging, as timm's `forward_intermediates`.

        Args:
            x: image [B, C, H, W].
            indices: stages to take: the last n if an int, these if a list, all if None.
            norm: apply the final norm to the last stage's intermediate.
            stop_early: stop after the last stage taken.
            output_fmt: of the intermediates: 'NCHW' or 'NHWC'.
            intermediates_only: return only the intermediates.

        Returns:
            The intermediates, or (forward_features' output, intermediates).
        """
        if output_fmt not in ("NCHW", "NHWC"):
            raise ExporterError(f"LITv2 intermediates come as NCHW or NHWC, not {output_fmt!r}.", "Pass one of those.")
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        _check_input(x.shape[2], x.shape[3], self.total_stride, self.hilo_windows)
        x, size = self.patch_embed(x)
        last = len(self.layers) - 1
        stages = self.layers[:max_index + 1] if stop_early else self.layers
        intermediates = []
        for i, layer in enumerate(stages):
            for blk in layer.blocks:
                x = blk(x, size)
            if i in take_indices:
                inter = self.norm(x) if norm and i == last else x
                inter = inter.reshape(x.shape[0], size[0], size[1], x.shape[2])
                intermediates.append(inter.permute(0, 3, 1, 2).contiguous() if output_fmt == "NCHW" else inter)
            if layer.downsample is not None:
                x, size = layer.downsample(x, size)
        if intermediates_only:
            return intermediates
        if len(stages) == len(self.layers):
            x = self.norm(x)  # sized for (and applied to) the last stage only
        return x.reshape(x.shape[0], size[0], size[1], x.shape[2]), intermediates

    @torch.jit.ignore
    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop what the intermediates at `indices` do not need (later stages, the last kept stage's
        token merging, the norm and head); returns the absolute indices kept."""
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        if prune_norm or max_index < len(self.layers) - 1:
            self.norm = nn.Identity()
        self.layers = self.layers[:max_index + 1]
        self.layers[-1].downsample = None
        self.hilo_windows = [w for w in self.hilo_windows if w[0] <= max_index + 1]
        self.feature_info = self.feature_info[:max_index + 1]
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _init_weights(m: nn.Module) -> None:
    # The authors' init: truncated-normal linears, unit LayerNorms, He-normal depthwise convs.
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, DWConv):
        conv = m.dwconv
        fan_out = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels // conv.groups
        nn.init.normal_(conv.weight, 0, (2.0 / fan_out) ** 0.5)
        nn.init.zeros_(conv.bias)


def _create_litv2(variant: str, pretrained: bool = False, **kwargs) -> LITv2:
    return build_model_with_cfg(
        LITv2, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
        # features_only=True: the stages through forward_intermediates (the modules take (tokens, size))
        feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls="getter"), **kwargs)


def _cfg(url: str = "", **kwargs) -> dict:
    return {
        "url": url,
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        # The authors evaluate with Resize(int(256 / 224 * 224)) + CenterCrop(224) (data/build.py): 224/256.
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "license": "apache-2.0",
        "paper_ids": "arXiv:2205.13213",
        "paper_name": "Fast Vision Transformers with HiLo Attention",
        "origin_url": "https://github.com/ziplab/LITv2",
        **kwargs,
    }


_RELEASES = "https://github.com/ziplab/LITv2/releases/download/v1.0"
default_cfgs = generate_default_cfgs({
    "litv2_small.in1k": _cfg(url=f"{_RELEASES}/litv2_s.pth"),
    "litv2_medium.in1k": _cfg(url=f"{_RELEASES}/litv2_m.pth"),
    "litv2_base.in1k": _cfg(url=f"{_RELEASES}/litv2_b.pth"),
})


# Configurations: classification/configs/litv2-{small,medium,base}.yaml (+ config.py defaults: patch 4,
# mlp_ratio 4, qkv_bias True, HAS_MSA [0, 0, 1, 1]).
@register_model
def litv2_small(pretrained: bool = False, **kwargs) -> LITv2:
    """LITv2-S: 28M params, 3.7 GFLOPs, 82.0% ImageNet top-1."""
    args = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), alpha=0.9, local_ws=(0, 0, 2, 1),
                drop_path_rate=0.2)
    return _create_litv2("litv2_small", pretrained, **dict(args, **kwargs))


@register_model
def litv2_medium(pretrained: bool = False, **kwargs) -> LITv2:
    """LITv2-M: 49M params, 7.5 GFLOPs, 83.3% ImageNet top-1."""
    args = dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), alpha=0.9, local_ws=(0, 0, 2, 1),
                drop_path_rate=0.3)
    return _create_litv2("litv2_medium", pretrained, **dict(args, **kwargs))


@register_model
def litv2_base(pretrained: bool = False, **kwargs) -> LITv2:
    """LITv2-B: 87M params, 13.2 GFLOPs, 83.6% ImageNet top-1."""
    args = dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), alpha=0.9, local_ws=(0, 0, 2, 1),
                drop_path_rate=0.5)
    return _create_litv2("litv2_base", pretrained, **dict(args, **kwargs))
