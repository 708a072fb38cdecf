# SPDX-License-Identifier: Apache-2.0
"""Held-out verification inputs: seeded random images and real photos, never the export's dummy input.

Photos come from scikit-image's bundled data (no download) and go through timm's own eval transform
for the model, so they look like what the deployed model will see.
"""
from __future__ import annotations

import functools
import hashlib
from typing import Any, Callable, TypeVar

import numpy as np
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "colorwheel", "camera")
RANDOM_SEED = 20261122  # differs from any export or init seed on purpose
T = TypeVar("T")


def photos(model: torch.nn.Module, size: tuple[int, int]) -> torch.Tensor:
    """[len(PHOTOS), 3, *size] preprocessed with timm's eval transform for `model` (mean, std,
    crop, interpolation from its pretrained config) at the resolution the graph was built for."""
    config = resolve_data_config({"input_size": (3, *size)}, model=model)
    return _photos(tuple(sorted(config.items()))).clone()


@functools.lru_cache(maxsize=4)
def _photos(config: tuple) -> torch.Tensor:
    """The photos through the eval transform of `config` (timm's data config, as items): made once per process,
    though a build's references and its parity check both hold the model to them."""
    import skimage.data  # scikit-image loads its data registry: only when photos are made

    transform = create_transform(**dict(config))
    images = []
    for name in PHOTOS:
        array = getattr(skimage.data, name)()
        images.append(transform(Image.fromarray(array).convert("RGB")))
    return torch.stack(images)


def random_images(n: int, size: tuple[int, int], seed: int = RANDOM_SEED) -> torch.Tensor:
    """Seeded standard-normal images (already 'normalised'), a different distribution from the photos."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, *size, generator=g)


def held_out(model: torch.nn.Module, size: tuple[int, int], n_random: int = 8) -> tuple[torch.Tensor, list[str]]:
    """All verification samples and a label per sample ('photo:astronaut', 'random:3'). Their values are fp16's (in
    fp32): the stored references keep the inputs in fp16, so a build's parity check and its references run the
    same images."""
    x = torch.cat([photos(model, size), random_images(n_random, size)]).half().float()
    labels = [f"photo:{p}" for p in PHOTOS] + [f"random:{i}" for i in range(n_random)]
    return x, labels


def batches(x: torch.Tensor, batch: int) -> list[torch.Tensor]:
    """Split into batches of exactly `batch` (the last one wraps around), so fixed-batch graphs run too."""
    n = x.shape[0]
    count = -(-n // batch)
    idx = np.arange(count * batch) % n
    return [x[torch.as_tensor(idx[i * batch:(i + 1) * batch])] for i in range(count)]


def once_per_input(compute: Callable[[Any], T]) -> Callable[[Any], T]:
    """`compute` of one input (a numpy array, a CPU tensor, or a list of them), run once for inputs of the same
    shapes, dtypes and values however often it is asked: a build's checks run PyTorch and each graph on the same
    images, and several graphs make the same token choices. The results are shared between the askers: read them,
    never write them."""
    done: dict = {}

    def once(x):
        key = _content_key(x)
        if key not in done:
            done[key] = compute(x)
        return done[key]

    return once


def _content_key(x) -> tuple:
    if isinstance(x, (list, tuple)):
        return tuple(_content_key(v) for v in x)
    values = x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return values.shape, values.dtype.str, hashlib.blake2b(values.tobytes(), digest_size=16).digest()
