# SPDX-License-Identifier: Apache-2.0
"""The PyTorch models a spec describes: the dense model and the reduced one (the reference every graph is held to)."""
from __future__ import annotations

import torch

from ..methods import apply_method
from ..models import check_fits, create_model
from ..spec import BuildSpec


def prepare(spec: BuildSpec) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(dense model, reduced model) for a spec; the same call rebuilds the reference for `verify`."""
    dense = create_model(spec.model, spec.weights, spec.seed, spec.img_size)
    check_fits(dense, spec.model, spec.batch.max)
    return dense, apply_method(dense, spec.method, **spec.method_params)
