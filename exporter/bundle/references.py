# SPDX-License-Identifier: Apache-2.0
"""references.npz: PyTorch's answers on the held-out inputs, stored so a target without the PyTorch model can
be held to the same thresholds (`exporter.verify.references` computes and checks them)."""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import ExporterError
from .files import DAMAGED, LIMITS, open_inside, write_bytes
from .engines import load_graph
from .layout import FP32, REFERENCES
from .manifest import io_of


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
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    write_bytes(path, buffer.getvalue(), bundle)


def read_references(bundle: Path) -> Optional[References]:
    """The stored references, or None for a bundle without them (built by an older exporter); read through the
    bounded reader, their unpacked size bounded too, and every array checked for the key, shape and type a build
    writes (else an ExporterError naming what is wrong)."""
    path = bundle / REFERENCES
    if not path.exists() and not path.is_symlink():
        return None
    with open_inside(path, bundle, "references") as f:
        try:
            with np.load(f, allow_pickle=False) as z:
                unpacked = sum(i.file_size for i in z.zip.infolist())
                if unpacked > LIMITS["references"]:
                    raise _damaged(path, f"it unpacks to {unpacked / 1e6:.0f} MB, more than the "
                                         f"{LIMITS['references'] / 1e6:.0f} MB references may take")
                if missing := sorted({"inputs", "labels", "logits"} - set(z.files)):
                    raise _damaged(path, f"it lacks {', '.join(missing)}")
                kept = [z[f"kept{i}"] for i in range(sum(1 for k in z.files if k.startswith("kept")))]
                optional = {k: z[k] if k in z.files else None for k in ("fp16_sensitive", "fp16_closeness")}
                refs = References(z["inputs"], [str(s) for s in z["labels"]], z["logits"], kept, **optional)
        except ExporterError:
            raise
        except Exception as e:  # not a zip (BadZipFile), a member that is not an array, pickled objects, ...
            raise _damaged(path, f"it cannot be read as numpy arrays ({type(e).__name__}: {e})") from None
    if problem := _shape_problem(refs) or _graph_problem(refs, bundle):
        raise _damaged(path, problem)
    return refs


def _graph_problem(refs: References, bundle: Path) -> Optional[str]:
    """The inputs and logits against the fp32 graph's input and output (what the runtimes are fed and compared)."""
    if not (bundle / FP32).is_file():
        return None
    io = io_of(load_graph(bundle / FP32, bundle))
    image, logits = io["inputs"][0]["shape"][1:], io["outputs"][0]["shape"][-1]
    if list(refs.inputs.shape[1:]) != image:
        return f"inputs are {list(refs.inputs.shape[1:])} per image, {FP32} takes {image}"
    if refs.logits.shape[1] != logits:
        return f"logits have {refs.logits.shape[1]} classes, {FP32} gives {logits}"
    return None


def _shape_problem(refs: References) -> Optional[str]:
    """What in the arrays a build never writes: the shapes and types of `References`, all for the same inputs."""
    n = len(refs.inputs)
    if refs.inputs.ndim != 4 or refs.inputs.shape[1] != 3 or refs.inputs.dtype != np.float16:
        return f"inputs are {refs.inputs.dtype}{list(refs.inputs.shape)}, not float16 [n, 3, H, W]"
    if refs.logits.ndim != 2 or len(refs.logits) != n or refs.logits.dtype != np.float32:
        return f"logits are {refs.logits.dtype}{list(refs.logits.shape)}, not float32[{n}, classes]"
    if len(refs.labels) != n:
        return f"{len(refs.labels)} labels for {n} inputs"
    for i, k in enumerate(refs.kept):
        if k.ndim != 2 or len(k) != n or not np.issubdtype(k.dtype, np.integer):
            return f"kept{i} is {k.dtype}{list(k.shape)}, not integer indices [{n}, k]"
    for name in ("fp16_sensitive", "fp16_closeness"):
        if (a := getattr(refs, name)) is not None and a.shape != (n,):
            return f"{name} is {list(a.shape)}, not [{n}]"
    return None


def _damaged(path: Path, why: str) -> ExporterError:
    return ExporterError(f"{path} is damaged: {why}.", DAMAGED)
