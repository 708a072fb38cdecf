# SPDX-License-Identifier: Apache-2.0
"""PyTorch's half model on the CPU at fp32 speed, for the fp16 error estimates of `checks.margins`.

A CPU has no fp16 arithmetic: PyTorch's half Linear and Conv2d widen to fp32, accumulate in fp32 and round each
output once (as tensor cores with fp32 accumulation do), at four times the time of fp32 (DeiT-S, 8 images: 1.2 s of
a 1.5 s forward in `addmm`). Inside `fp32_products`, a half Linear or Conv2d runs that same arithmetic as an fp32
call on its fp16 operands, rounded to fp16 once: the same result up to fp32 summation order (0.1% of a DeiT-S
qkv projection's outputs differ by one fp16 ulp, as between two BLAS builds or thread counts), at fp32 speed. Every
other op runs in half as before.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_PRODUCTS = (F.linear, F.conv2d)


class fp32_products(TorchFunctionMode):
    """Within it, half-precision `F.linear` and `F.conv2d` on the CPU compute in fp32 and round once to fp16."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _PRODUCTS and args[0].dtype == torch.float16 and args[0].device.type == "cpu":
            return func(*map(_widen, args), **{k: _widen(v) for k, v in kwargs.items()}).half()
        return func(*args, **kwargs)


def _widen(value):
    return value.float() if isinstance(value, torch.Tensor) and value.dtype == torch.float16 else value
