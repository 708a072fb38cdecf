# SPDX-License-Identifier: Apache-2.0
"""`vit_digits`: a small timm VisionTransformer for scikit-learn's handwritten digits, the project's trained fixture.

Pretrained weights and ImageNet cannot be downloaded in CI, so exported accuracy is checked on a model trained
here (`python -m exporter.fixtures.digits train`) on real scans that scikit-learn ships (1,797 8x8 digits).
The 8x8 scans are upscaled to 32x32 and cut into 4x4 patches, so each of the 64 patch tokens (plus the class
token) carries one pixel of the scan; 12 blocks, so every method's default locations and stages exist.
Importing this module registers the model with timm.
"""
from __future__ import annotations

from pathlib import Path

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

__all__ = ["CHECKPOINT", "DIGITS_MEAN", "DIGITS_STD"]

# The trained weights ship with the package: `--weights pretrained` (the default) loads them, no hub involved.
CHECKPOINT = Path(__file__).resolve().parents[1] / "fixtures" / "data" / "digits_vit.safetensors"

# pixel statistics of the 1,797 scans scaled to [0, 1] (grey, so the same for R, G and B)
DIGITS_MEAN = (0.305,) * 3
DIGITS_STD = (0.376,) * 3


def _cfg(**kwargs) -> dict:
    return {
        "url": "",
        "file": str(CHECKPOINT),
        "num_classes": 10,
        "input_size": (3, 32, 32),
        "pool_size": None,
        # the whole scan: resize 8x8 -> 32x32 with no crop
        "crop_pct": 1.0,
        "interpolation": "bicubic",
        "fixed_input_size": True,
        "mean": DIGITS_MEAN,
        "std": DIGITS_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "license": "apache-2.0",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({"vit_digits.sklearn": _cfg()})


@register_model
def vit_digits(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT for 32x32 upscaled digits: patch 4 (65 tokens), 12 blocks of width 64, 4 heads, 10 classes."""
    model_args = dict(img_size=32, patch_size=4, embed_dim=64, depth=12, num_heads=4, num_classes=10)
    return build_model_with_cfg(
        VisionTransformer, "vit_digits", pretrained, pretrained_filter_fn=checkpoint_filter_fn,
        **dict(model_args, **kwargs),
    )
