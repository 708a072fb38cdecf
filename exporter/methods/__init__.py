# SPDX-License-Identifier: Apache-2.0
"""Token-reduction methods: `apply_method(model, name, **params)` returns a reduced `nn.Module`.

One module per method registers itself here on import. `none` is the dense baseline.
"""
from __future__ import annotations

from torch import nn

from ..errors import ExporterError
from .base import REGISTRY, Dense, Method, ReducedViT, Traced, register

register("none", "dense baseline: the model unchanged")(Dense)

# Importing a method module registers it; keep this list in the order methods are documented.
from . import evit, evovit, diffrate, tome  # noqa: E402,F401


def list_methods() -> list[str]:
    return list(REGISTRY)


def get_method(name: str) -> Method:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ExporterError(
            f"Unknown method '{name}'.", f"Choose one of: {', '.join(REGISTRY)}."
        ) from None


def apply_method(model: nn.Module, name: str, **params) -> nn.Module:
    """Return `model` running method `name` with `params`, in eval mode.

    The caller's model is not modified: the reduced module shares its parameters.
    """
    method = get_method(name)
    return method.apply(model, **method.resolve(params)).eval()


__all__ = ["apply_method", "list_methods", "get_method", "Dense", "ReducedViT", "Traced", "Method"]
