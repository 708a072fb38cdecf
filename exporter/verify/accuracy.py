# SPDX-License-Identifier: Apache-2.0
"""Top-1/top-5 of a bundle on labelled images (`verify --data DIR`): PyTorch and every graph, on the same images.

Parity on held-out photos shows the graphs compute what PyTorch computes; this shows what that means for
classification: the graphs' accuracy next to their PyTorch model's (and the dense model's, for a reduced one).
The folder is read in ImageNet layout with torchvision's ImageFolder (class index = position of the sub-folder's
name in sorted order) and preprocessed with timm's eval transform for the model, as `checks.inputs` does.
Field names follow timm's validate.py (top1, top1_err, top5, top5_err, in percent).
"""
from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

<<<<<<< HEAD
from ..bundle import precision_of, read_manifest, recorded_classes
from ..console import make as make_console
=======
from ..bundle import read_manifest, recorded_classes
from ..console import inert, make as make_console
from ..errors import ExporterError
>>>>>>> safeio
from ..models import input_size
from ..runtime import onnx_runner
from ..spec import PRECISIONS, BuildSpec
from ..stages.images import eval_transform, open_folder
from ..stages.model import prepare



@dataclass
class Score:
    """One runtime's accuracy (timm's validate.py fields, percent) and counts, so 'within one image' can be
    checked exactly."""

    runtime: str  # "pytorch", "pytorch (dense)" or a graph's file name
    top1: float
    top1_err: float
    top5: float
    top5_err: float
    correct_top1: int
    correct_top5: int
    top1_agreement: int  # images with the same top-1 as the bundle's PyTorch model


@dataclass
class Accuracy:
    data: str
    images: int
    classes: int
    batch: int
    results: list[Score]

    def score(self, runtime: str) -> Score:
        return next(r for r in self.results if r.runtime == runtime)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Accuracy":
        return cls(**{**d, "results": [Score(**r) for r in d["results"]]})


<<<<<<< HEAD
=======
LAYOUT = "one sub-folder per class holding its images (ImageNet layout: DIR/<class>/<image>)"


def open_folder(data: Path, classes: int):
    """`data` as a torchvision ImageFolder, checked against the model's class count before any work is done."""
    from torchvision.datasets import ImageFolder  # torchvision's datasets: only for verify --data

    fix = f"Give --data a folder with {LAYOUT}, e.g. `python -m exporter.fixtures.digits export-split DIR`."
    if not data.is_dir():
        raise ExporterError(f"--data {data} is not a directory.", fix)
    class Folder(ImageFolder):
        make_dataset = staticmethod(_samples)

    try:
        dataset = Folder(str(data), loader=_image)
    except FileNotFoundError as e:
        if any(p.is_dir() for p in data.iterdir()):  # torchvision names the class folders that hold no image
            raise ExporterError(f"--data {data}: {e}", fix) from None
        loose = sum(1 for p in data.iterdir() if p.is_file())
        raise ExporterError(
            f"--data {data} has no class sub-folders with images ({loose} files lie directly in it).", fix
        ) from None
    if len(dataset.classes) != classes:
        raise ExporterError(
            f"--data {data} has {len(dataset.classes)} class folders but the model predicts {classes} classes.",
            f"Give one sub-folder per class, all {classes} of them, named so that their sorted order is the model's "
            "class order (as torchvision's ImageFolder maps them).",
        )
    for path, _ in dataset.samples:  # each decoded once here: a file that is no image fails now, not minutes into the run
        _image(path, decode=False)
    return dataset


def _samples(directory: str, class_to_idx: dict[str, int], extensions=None, is_valid_file=None,
             allow_empty: bool = False) -> list[tuple[str, int]]:
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
        print(inert(f"--data {directory}: {'; '.join(left)}."), file=sys.stderr)
    return samples


def _image(path: str, decode: bool = True):
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
        raise ExporterError(f"--data: {path} is too large to decode safely ({e}).",
                            "Remove that file, or resize it below PIL's MAX_IMAGE_PIXELS.") from None
    except (OSError, SyntaxError, ValueError) as e:  # PIL.UnidentifiedImageError, truncated files, unreadable files
        raise ExporterError(f"--data: {path} is not an image PIL can read ({e}).",
                            "Remove or replace that file; every file with an image extension under --data is read.") from None


>>>>>>> safeio
def check(bundle: Path, data: Path):
    """The bundle's manifest and its dataset, or the error a user can fix (before verification starts)."""
    manifest, _ = read_manifest(bundle)
    return manifest, open_folder(data, recorded_classes(manifest))


def measure(bundle: Path, data: Path, console: Optional[Console] = None, threads: Optional[int] = None) -> Accuracy:
    """Top-1/top-5 of PyTorch (the bundle's model, and the dense one if reduced) and of every graph on `data`
    (plugin graphs on the token ops' reference), for the report's `accuracy`. `threads` sets PyTorch's and onnxruntime's intra-op
    threads for the run (default: theirs)."""
    console = console or make_console()
    manifest, dataset = check(bundle, data)
    spec = BuildSpec.from_dict(manifest["spec"])
    dense, model = prepare(spec)
    size = input_size(dense)
    dataset.transform = eval_transform(dense, size)
    runners = {"pytorch": _torch(model)}
    if spec.method != "none":
        runners["pytorch (dense)"] = _torch(dense)
    for graph in sorted(manifest["io"], key=lambda g: (PRECISIONS.index(precision_of(g)), g)):  # fp32, fp16, 8-bit
        runners[graph] = _onnx(onnx_runner(bundle / graph, threads), spec.batch.opt)
    batch = spec.batch.opt
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=False, num_workers=0)
    labels, logits = [], {name: [] for name in runners}
    columns = (TextColumn("accuracy on {task.fields[data]}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    saved = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task("images", total=len(dataset), data=data)
            for x, y in loader:
                labels.append(y.numpy())
                for name, run in runners.items():
                    logits[name].append(run(x))
                progress.advance(task, len(y))
    finally:
        torch.set_num_threads(saved)
    y = np.concatenate(labels)
    outputs = {name: np.concatenate(chunks) for name, chunks in logits.items()}
    reference = outputs["pytorch"].argmax(1)
    results = [_scores(name, out, y, reference) for name, out in outputs.items()]
    return Accuracy(str(data), int(len(y)), len(dataset.classes), batch, results)


def _torch(model: torch.nn.Module):
    def run(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return model(x).float().numpy()

    return run


def _onnx(runner, batch: int):
    """A graph's logits for any chunk: the last chunk is padded to `batch` (fixed-batch graphs need it)."""

    def run(x: torch.Tensor) -> np.ndarray:
        n = x.shape[0]
        padded = torch.cat([x, x[-1:].expand(batch - n, *x.shape[1:])]) if n < batch else x
        return runner(padded.numpy())[0][:n].astype(np.float32)

    return run


def _scores(name: str, logits: np.ndarray, labels: np.ndarray, reference: np.ndarray) -> Score:
    k = min(5, logits.shape[1])
    top = np.argsort(-logits, axis=1)[:, :k]
    correct1 = int((top[:, 0] == labels).sum())
    correct5 = int((top == labels[:, None]).any(axis=1).sum())
    n = len(labels)
    return Score(
        runtime=name,
        top1=round(100 * correct1 / n, 3),
        top1_err=round(100 - 100 * correct1 / n, 3),
        top5=round(100 * correct5 / n, 3),
        top5_err=round(100 - 100 * correct5 / n, 3),
        correct_top1=correct1,
        correct_top5=correct5,
        top1_agreement=int((top[:, 0] == reference).sum()),
    )


def table(accuracy: Accuracy) -> str:
    """Markdown table of `measure`'s result (also report.md's accuracy section)."""
    lines = [
        f"Accuracy on {accuracy.data} ({accuracy.images} images, {accuracy.classes} classes, batch {accuracy.batch})",
        "",
        "| runtime | top1 | top5 | correct (top-1) | same top-1 as PyTorch |",
        "|---|---|---|---|---|",
    ]
    for r in accuracy.results:
        lines.append(f"| {r.runtime} | {r.top1:.2f} | {r.top5:.2f} | {r.correct_top1}/{accuracy.images} | "
                     f"{r.top1_agreement}/{accuracy.images} |")
    return "\n".join(lines)
