# SPDX-License-Identifier: Apache-2.0
"""Labelled images in ImageNet layout (DIR/<class>/<image>), read the one way `verify --data` and `build --calib`
share: torchvision's ImageFolder (class index = position of the sub-folder's name in sorted order), checked against
the model's class count and every file's header before any work is done, and preprocessed with timm's eval
transform for the model (as `checks.inputs` does)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from PIL import Image

from ..console import inert
from ..errors import ExporterError

LAYOUT = "one sub-folder per class holding its images (ImageNet layout: DIR/<class>/<image>)"


def open_folder(data: Path, classes: int, flag: str = "--data"):
    """`data` as a torchvision ImageFolder, checked against the model's class count and every image decoded before
    any work is done; errors name `flag`, the option that gave the folder."""
    from torchvision.datasets import ImageFolder  # torchvision's datasets: only for labelled folders

    fix = f"Give {flag} a folder with {LAYOUT}, e.g. `python -m exporter.fixtures.digits export-split DIR`."
    if not data.is_dir():
        raise ExporterError(f"{flag} {data} is not a directory.", fix)

    class Folder(ImageFolder):
        @staticmethod
        def make_dataset(directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
            return _samples(directory, class_to_idx, extensions, flag)

    try:
        dataset = Folder(str(data), loader=lambda path: _image(path, flag=flag))
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
    for path, _ in dataset.samples:  # each decoded once here: a file that is no image fails now, not minutes into the run
        _image(path, decode=False, flag=flag)
    return dataset


def _samples(directory: str, class_to_idx: dict[str, int], extensions, flag: str) -> list[tuple[str, int]]:
    """ImageFolder's (path, class) list, but links to directories are not followed (`7/up -> ..` would loop and
    count every image many times) and a file reached twice (a link to a file) is counted once; what was left out
    is said on stderr."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

    samples, seen, found, links, twice = [], set(), set(), [], 0
    for name in sorted(class_to_idx):
        for root, dirs, files in sorted(os.walk(os.path.join(directory, name))):  # os.walk follows no link
            links += [os.path.join(root, d) for d in dirs if os.path.islink(os.path.join(root, d))]
            for file in sorted(files):
                path = os.path.join(root, file)
                if not has_file_allowed_extension(path, extensions or IMG_EXTENSIONS):
                    continue
                real = os.path.realpath(path)
                if real in seen:
                    twice += 1
                    continue
                seen.add(real)
                found.add(name)
                samples.append((path, class_to_idx[name]))
    if empty := sorted(set(class_to_idx) - found):
        raise FileNotFoundError(f"Found no valid file for the classes {', '.join(empty)}.")
    if links or twice:
        left = [f"{len(links)} link{'s' if len(links) != 1 else ''} to folders not followed ({', '.join(links[:3])}"
                f"{', ...' if len(links) > 3 else ''})"] if links else []
        left += [f"{twice} file{'s' if twice != 1 else ''} reached twice through links counted once"] if twice else []
        print(inert(f"{flag} {directory}: {'; '.join(left)}."), file=sys.stderr)
    return samples


def _image(path: str, decode: bool = True, flag: str = "--data"):
    """The image at `path` as RGB (torchvision's loader), or an ExporterError naming the file PIL cannot read: not
    an image, truncated (decoded whole, so up front too), or a decompression bomb (more pixels than PIL's
    MAX_IMAGE_PIXELS)."""
    try:
        with Image.open(path) as image:
            if not decode:
                image.load()  # every pixel: a truncated file fails here, before the run
                return None
            return image.convert("RGB")
    except Image.DecompressionBombError as e:
        raise ExporterError(f"{flag}: {path} is too large to decode safely ({e}).",
                            "Remove that file, or resize it below PIL's MAX_IMAGE_PIXELS.") from None
    except (OSError, SyntaxError, ValueError) as e:  # PIL.UnidentifiedImageError, truncated files, unreadable files
        raise ExporterError(f"{flag}: {path} is not an image PIL can read ({e}).",
                            f"Remove or replace that file; every file with an image extension under {flag} is read.") from None


def eval_transform(dense: torch.nn.Module, size) -> object:
    """timm's eval transform for `dense` at input size `size` (h, w)."""
    from timm.data import create_transform, resolve_data_config

    return create_transform(**resolve_data_config({"input_size": (3, *size)}, model=dense))
