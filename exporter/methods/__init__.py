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


def search(model: nn.Module, images, labels, target_gmacs: float, checkpoint=None, report=None, **settings):
    """DiffRate's search for a frozen `model` (`diffrate_search`): the (prune_kept, merge_kept) whose counted GMACs
    meet `target_gmacs`, learned on `images` (preprocessed [M, 3, H, W]) and `labels`; `settings` are
    `diffrate_search.Settings` fields (epochs, batch, lr, penalty, granularity, seed...)."""
    from .diffrate_search import SearchViT, Settings, flops_cost, search as run

    cost, constant = flops_cost(model)
    options = Settings(target=target_gmacs, unit="GMACs", **settings)
    searcher = SearchViT(model, cost, constant, options.granularity)
    prune, merge, _ = run(searcher, images, labels, options, checkpoint, report or (lambda p: None))
    return prune, merge


__all__ = ["apply_method", "search", "list_methods", "get_method", "Dense", "ReducedViT", "Traced", "Method"]
