# SPDX-License-Identifier: Apache-2.0
"""Counted FLOPs of a forward pass, via torch's FlopCounterMode (what the graph really multiplies).

Reported as GMACs (multiply-accumulates), the convention of the papers' "GFLOPs" (DeiT-S 4.6).
torch does not count the CPU kernel of scaled_dot_product_attention, so it is registered here with
torch's own SDPA formula.
"""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


_CUSTOM = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}


def count_gmacs(module: torch.nn.Module, img_size: tuple[int, int], in_chans: int = 3) -> float:
    """GMACs of one image through `module` (batch 1, eval, no grad)."""
    x = torch.zeros(1, in_chans, *img_size)
    counter = FlopCounterMode(display=False, custom_mapping=_CUSTOM)
    with torch.no_grad(), counter:
        module.eval()(x)
    return counter.get_total_flops() / 2e9
