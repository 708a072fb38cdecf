# SPDX-License-Identifier: Apache-2.0
"""references.npz: PyTorch's answers on the held-out inputs, stored so a target without the PyTorch model can
be held to the same thresholds (`exporter.verify.references` computes and checks them)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .layout import REFERENCES


@dataclass
class References:
    inputs: np.ndarray  # [n, 3, H, W] float16
    labels: list[str]
    logits: np.ndarray  # [n, classes] float32, PyTorch fp32 on inputs.astype(float32)
    kept: list[np.ndarray]  # per reduction, [n, k] kept-token indices (empty for dense models)
    fp16_sensitive: Optional[np.ndarray]  # [n] bool, or None for dense models
    fp16_closeness: Optional[np.ndarray] = None  # [n] float32, or None for dense models (and older bundles)


def has_references(bundle: Path) -> bool:
    return (bundle / REFERENCES).is_file()


def write_references(bundle: Path, refs: References) -> None:
    """references.npz (compressed), written whole: a reader sees no file or all of it."""
    path = bundle / REFERENCES
    arrays = {"inputs": refs.inputs, "labels": np.array(refs.labels), "logits": refs.logits}
    arrays.update({f"kept{i}": k for i, k in enumerate(refs.kept)})
    if refs.fp16_closeness is not None:
        arrays.update(fp16_sensitive=refs.fp16_sensitive, fp16_closeness=refs.fp16_closeness)
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)


def read_references(bundle: Path) -> Optional[References]:
    """The stored references, or None for a bundle without them (built by an older exporter)."""
    path = bundle / REFERENCES
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        kept = [z[f"kept{i}"] for i in range(sum(1 for k in z.files if k.startswith("kept")))]
        optional = {k: z[k] if k in z.files else None for k in ("fp16_sensitive", "fp16_closeness")}
        return References(z["inputs"], [str(s) for s in z["labels"]], z["logits"], kept, **optional)
