"""LITv2 (Pan, Cai, Zhuang: "Fast Vision Transformers with HiLo Attention", NeurIPS 2022,
https://arxiv.org/abs/2205.13213; official code and weights: https://github.com/ziplab/LITv2, Apache-2.0).

A four-stage hierarchical ViT: stages 1–2 are ConvFFN blocks without attention (LayerNorm + an MLP with a
3×3 depthwise conv), stages 3–4 add HiLo attention (window 2 in stage 3, 1 = global MSA in stage 4,
α = 0.9), and deformable token merging (DTM) halves the map between stages.

Importing this module registers `litv2_small`, `litv2_medium` and `litv2_base` with timm, so
`timm.create_model("litv2_small", pretrained=False)` works. Module and parameter names follow
`classification/models/{litv2,layers,blocks,attentions,patch_embed}.py` of the official repo, so the
released checkpoints (`litv2_s.pth` ...) load with `load_state_dict(..., strict=True)` without
remapping. NOTE: those files store the weights under the key 'model' (`torch.load(f)['model']`).

Differences from the official classification code, none of which changes the function:
- the deformable conv is `deform.deform_conv2d` (grid_sample + conv) instead of the authors' CUDA
  extension, so the model exports to ONNX and TensorRT;
- the map size travels with the tokens instead of being fixed at construction, and HiLo pads maps
  that are not multiples of its window (as the authors' detection backbone does);
- inputs whose sides are not multiples of the total stride (32) raise ExporterError.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn
from torch.nn.modules.utils import _pair

from ..errors import ExporterError
from .deform import DTM
from .hilo import HiLo, hilo_macs

__all__ = ["LITv2", "litv2_flops"]

Size = tuple[int, int]


class DWConv(nn.Module):
    """3×3 depthwise conv on tokens; its zero padding is LITv2's only positional encoding."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, bias=True, groups=dim)

    def forward(self, x: torch.Tensor, size: Size) -> torch.Tensor:
        b, _, c = x.shape
        x = self.dwconv(x.transpose(1, 2).reshape(b, c, *size))
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
        return super().forward(x + self.drop_path(self.attn(self.norm1(x), size)), size)


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

    def forward(self, x: torch.Tensor, size: Size) -> tuple[torch.Tensor, Size]:
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

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Size]:
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
    """

    exporter_family = "litv2"  # how exporter.models recognises a supported non-ViT model
    checkpoint_filter_fn = staticmethod(checkpoint_filter_fn)  # what exporter.models' checkpoint loader applies

    def __init__(
            self,
            img_size: int | Size = 224,
            patch_size: int = 4,
            in_chans: int = 3,
            num_classes: int = 1000,
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
    ):
        super().__init__()
        stages = len(depths)
        if not len(num_heads) == len(has_msa) == len(local_ws) == stages:
            raise ExporterError(
                f"LITv2 got {stages} stage depths but {len(num_heads)} head counts, {len(has_msa)} has_msa "
                f"flags and {len(local_ws)} window sizes.", "Give one value per stage for each.")
        self.num_classes = num_classes
        self.num_features = embed_dim * 2 ** (stages - 1)
        self.total_stride = patch_size * 2 ** (stages - 1)
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

    def check_img_size(self, img_size: int | Sequence[int]) -> None:
        """Raise ExporterError unless both sides are multiples of the total stride and every HiLo window fits."""
        h, w = _pair(img_size)
        if h % self.total_stride or w % self.total_stride:
            shown = f"{h}" if h == w else f"{h}×{w}"
            raise ExporterError(
                f"Image size {shown} is not divisible by the model's total stride {self.total_stride}.",
                f"Use a multiple of {self.total_stride}, e.g. 224.")
        for stage, stride, ws in self.hilo_windows:
            if ws > min(h, w) // stride:
                raise ExporterError(
                    f"HiLo window size {ws} in stage {stage} does not fit its {h // stride}×{w // stride} feature map "
                    f"at image size {h}×{w}.", f"Use a window size of at most {min(h, w) // stride} in that stage.")

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_img_size(tuple(x.shape[-2:]))
        x, size = self.patch_embed(x)
        for layer in self.layers:
            x, size = layer(x, size)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=1)
        return x if pre_logits else self.head(x)

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


def litv2_flops(model: LITv2 | str, img_size: int | Sequence[int] = 224) -> int:
    """Multiply-accumulates of one image (the "FLOPs" the LITv2 paper and fvcore report).

    Counts convolutions (the deformable one as offset conv + kernel), linears and attention matmuls;
    not norms, activations, pooling, softmax or the bilinear sampling (< 1% together).
    """
    if isinstance(model, str):
        import timm
        with torch.device("meta"):  # only the architecture is needed: skip allocating and initialising weights
            model = timm.create_model(model, pretrained=False)
    model.check_img_size(img_size)
    h, w = _pair(img_size)
    stem = model.patch_embed.proj
    h, w = h // stem.stride[0], w // stem.stride[1]
    macs = h * w * stem.weight.numel()
    for layer in model.layers:
        for blk in layer.blocks:
            mlp = blk.mlp
            macs += h * w * (mlp.fc1.weight.numel() + mlp.dwconv.dwconv.weight.numel() + mlp.fc2.weight.numel())
            if isinstance(blk, HiLoBlock):
                attn = blk.attn
                macs += hilo_macs(attn.dim, attn.num_heads, h, w, attn.ws, attn.alpha)
        if layer.downsample is not None:
            dconv = layer.downsample.dconv
            h, w = h // 2, w // 2
            macs += h * w * (dconv.weight.numel() + dconv.conv_offset.weight.numel())
    if isinstance(model.head, nn.Linear):
        macs += model.head.weight.numel()
    return macs


def _create_litv2(variant: str, pretrained: bool = False, **kwargs) -> LITv2:
    return build_model_with_cfg(LITv2, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn, **kwargs)


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
