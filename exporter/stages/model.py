# SPDX-License-Identifier: Apache-2.0
"""The PyTorch models a spec describes: the dense model and the reduced one (the reference every graph is held to)."""
from __future__ import annotations

from dataclasses import replace

import torch

from ..methods import apply_method, get_method
from ..models import check_fits, create_model
from ..spec import BuildSpec


def prepare(spec: BuildSpec) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(dense model, reduced model) for a spec; the same call rebuilds the reference for `verify`."""
    dense = create_model(spec.model, spec.weights, spec.seed, spec.img_size)
    check_fits(dense, spec.model, spec.batch.max)
    return dense, apply_method(dense, spec.method, **spec.method_params)


def timing_model(spec: BuildSpec) -> torch.nn.Module:
    """The reduced model of a spec on seeded random weights, for timing (bench): a time depends on the token counts,
    not on the weights, and random ones need no checkpoint or network. What binds the method to the spec's weights (a
    searched DiffRate schedule) is applied by the counts it gives (`Method.unbind`), so every count is the bundle's."""
    params = get_method(spec.method).unbind(spec.method_params)
    return prepare(replace(spec, weights="random", method_params=params))[1]
