# SPDX-License-Identifier: Apache-2.0
"""Labelled images in ImageNet layout (DIR/<class>/<image>), read the one way `verify --data` and `build --calib`
share: torchvision's ImageFolder (class index = position of the sub-folder's name in sorted order), checked against
the model's class count and every file's header before any work is done, and preprocessed with timm's eval
transform for the model (as `checks.inputs` does)."""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from ..errors import ExporterError

LAYOUT = "one sub-folder per class holding its images (ImageNet layout: DIR/<class>/<image>)"


def open_folder(data: Path, classes: int, flag: str = "--data"):
    """`data` as a torchvision ImageFolder, checked against the model's class count before any work is done;
    errors name `flag`, the option that gave the folder."""
    from torchvision.datasets import ImageFolder  # torchvision's datasets: only for labelled folders

    fix = f"Give {flag} a folder with {LAYOUT}, e.g. `python -m exporter.fixtures.digits export-split DIR`."
    if not data.is_dir():
        raise ExporterError(f"{flag} {data} is not a directory.", fix)
    try:
        dataset = ImageFolder(str(data), loader=_image)
    except FileNotFoundError as e:
        if any(p.is_dir() for p in data.iterdir()):  # torchvision names the class folders that hold no image
            raise ExporterError(f"{flag} {data}: {e}", fix) from None
        loose = sum(1 for p in data.iterdir() if p.is_file())
        raise ExporterError(
            f"{flag} {data} has no class sub-folders with images ({loose} files lie directly in it).", fix
        ) from None
    if len(dataset.classes) != classes:
        raise ExporterError(
            f"{flag} {data} has {len(dataset.classes)} class folders but the model predicts {classes} classes.",
            f"Give one sub-folder per class, all {classes} of them, named so that their sorted order is the model's "
            "class order (as torchvision's ImageFolder maps them).",
        )
    for path, _ in dataset.samples:  # headers only: a file that is no image fails here, not minutes into the run
        _image(path, decode=False, flag=flag)
    return dataset


def _image(path: str, decode: bool = True, flag: str = "--data"):
    """The image at `path` as RGB (torchvision's loader), or an ExporterError naming the file PIL cannot read."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB") if decode else None
    except OSError as e:  # PIL.UnidentifiedImageError, truncated files, unreadable files
        raise ExporterError(f"{flag}: {path} is not an image PIL can read ({e}).",
                            f"Remove or replace that file; every file with an image extension under {flag} is read.") from None


def eval_transform(dense: torch.nn.Module, size) -> object:
    """timm's eval transform for `dense` at input size `size` (h, w)."""
    from timm.data import create_transform, resolve_data_config

    return create_transform(**resolve_data_config({"input_size": (3, *size)}, model=dense))
