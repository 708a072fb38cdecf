# SPDX-License-Identifier: Apache-2.0
"""Top-1/top-5 of a bundle on labelled images (`verify --data DIR`): PyTorch and every graph, on the same images.

Parity on held-out photos shows the graphs compute what PyTorch computes; this shows what that means for
classification: the graphs' accuracy next to their PyTorch model's (and the dense model's, for a reduced one).
The folder is read in ImageNet layout with torchvision's ImageFolder (class index = position of the sub-folder's
name in sorted order) and preprocessed with timm's eval transform for the model, as `checks.inputs` does.
Field names follow timm's validate.py (top1, top1_err, top5, top5_err, in percent).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..bundle import precision_of, read_manifest, recorded_classes
from ..console import make as make_console
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
    results = [score(name, out, y, reference) for name, out in outputs.items()]
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


def score(name: str, logits: np.ndarray, labels: np.ndarray, reference: np.ndarray) -> Score:
    """Top-1/top-5 of `logits` against `labels`, and how many top-1s equal `reference` (PyTorch's top-1 classes)."""
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
