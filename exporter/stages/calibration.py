# SPDX-License-Identifier: Apache-2.0
"""The images of `build --calib DIR`: a seeded draw of --calib-samples to calibrate the 8-bit graph on, and the
rest (disjoint, at most HELD_OUT of them) to judge its accuracy on. Checked before any work: the folder's layout
and classes (`images.open_folder`), and enough images for both."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ExporterError
from ..spec import BuildSpec
from .images import eval_transform, open_folder

MIN_HELD_OUT = 100  # fewer held-out images cannot resolve 1 point of top-1
HELD_OUT = 1000  # at most this many held-out images are evaluated


@dataclass
class Calibration:
    dataset: object  # the ImageFolder
    calibrate: list[int]  # indices into dataset.samples
    held_out: list[int]

    def tensors(self, indices: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(images [n, 3, h, w] float32, labels [n]) through the model's eval transform."""
        pairs = [self.dataset[i] for i in indices]
        return torch.stack([x for x, _ in pairs]).numpy(), np.array([y for _, y in pairs])

    def record(self) -> dict:
        return {"folder": str(self.dataset.root), "classes": len(self.dataset.classes), "images": len(self.dataset),
                "calibrated_on": [self._name(i) for i in self.calibrate], "held_out": len(self.held_out)}

    def _name(self, i: int) -> str:
        return str(Path(self.dataset.samples[i][0]).relative_to(self.dataset.root))


def open_calibration(spec: BuildSpec, dense: torch.nn.Module, size, classes: int) -> Calibration:
    """The --calib folder split seeded by --seed, or the error a user can fix."""
    dataset = open_folder(Path(spec.calib), classes, flag="--calib")
    need = spec.calib_samples + MIN_HELD_OUT
    if len(dataset) < need:
        raise ExporterError(
            f"--calib {spec.calib} has {len(dataset)} images; calibrating on {spec.calib_samples} and judging the "
            f"8-bit graph on at least {MIN_HELD_OUT} others needs {need}.",
            f"Add images, or lower --calib-samples to {max(1, len(dataset) - MIN_HELD_OUT)} or fewer.")
    dataset.transform = eval_transform(dense, size)
    order = np.random.default_rng(spec.seed).permutation(len(dataset))
    return Calibration(dataset, sorted(order[:spec.calib_samples].tolist()),
                       sorted(order[spec.calib_samples:spec.calib_samples + HELD_OUT].tolist()))


def batches(images: np.ndarray, batch: int):
    """`images` in chunks of `batch` (a fixed-batch graph's size), the last filled up with the first images."""
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        if len(chunk) < batch:
            chunk = np.concatenate([chunk, np.resize(images, (batch - len(chunk), *images.shape[1:]))])
        yield chunk
