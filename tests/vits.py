# SPDX-License-Identifier: Apache-2.0
"""Small timm ViTs and inputs for the tests: one builder, one image helper."""
from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer


def decisive_vit(seed: int = 0, qk_gain: float = 2.0, **config) -> VisionTransformer:
    """A random timm VisionTransformer whose class-token attention is far from uniform.

    timm's init (std 0.02) makes every attention row nearly uniform, so the top-k cutoff falls
    between near-equal scores. Scaling the query and key weights spreads the attention logits; a
    larger gain spreads them more but also raises the fp16 error of the scores (measured: gain 2
    gives about 0.7% relative fp16 error against a median 3.5% gap between neighbouring scores).
    """
    cfg = dict(img_size=64, patch_size=8, embed_dim=48, depth=6, num_heads=3, num_classes=10)
    cfg.update(config)
    torch.manual_seed(seed)
    vit = VisionTransformer(**cfg).eval()
    with torch.no_grad():
        for p in vit.parameters():
            p.normal_(0.0, 0.3)  # random LayerNorm affines, biases, embeddings too
        for blk in vit.blocks:
            dim = blk.attn.qkv.in_features
            blk.attn.qkv.weight.normal_(0.0, dim**-0.5)
            blk.attn.qkv.weight[: 2 * dim] *= qk_gain**0.5
            for lin in (blk.attn.proj, blk.mlp.fc1, blk.mlp.fc2):
                lin.weight.normal_(0.0, lin.in_features**-0.5)
            if hasattr(blk.ls1, "gamma"):
                blk.ls1.gamma.uniform_(0.05, 0.2)
                blk.ls2.gamma.uniform_(0.05, 0.2)
        for norm in [m for m in vit.modules() if isinstance(m, torch.nn.LayerNorm)]:
            norm.weight.uniform_(0.5, 1.5)
        vit.head.weight.normal_(0.0, 0.3 * vit.head.in_features**-0.5)  # logits of order 1
    return vit


def images(vit: VisionTransformer, batch: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    h, w = vit.patch_embed.img_size
    return torch.randn(batch, 3, h, w, generator=g)
