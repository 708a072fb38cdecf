"""PyTorch's answers stored in the bundle (references.npz), so a target without the workstation's
PyTorch model can be held to the same thresholds.

`build` writes the held-out inputs (fp16, which halves the file; PyTorch ran on exactly these values
widened to fp32, so nothing is lost), PyTorch fp32's logits, for token-reduction models the kept-token
indices of every reduction, and `fp16_sensitive`: the samples with a token choice whose fp32 score
margin is within twice the fp16 error of those scores (`checks.margins`), where fp16 may tip it.

`check` runs any runtime (onnxruntime here, a TensorRT engine on the target) on the stored inputs
and compares with `parity.compare`, the same thresholds and report rows as the onnxruntime parity
check. A deployment graph has no kept-index outputs, so a runtime's token choices are not observable
here; the flip rule becomes: in fp16, samples marked `fp16_sensitive` (where a near-tie may legitimately
tip) are left out of the thresholds and counted in the row; every other sample is held to them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..checks.parity import Comparison, StoredComparison, compare
from ..runtime import Runner
from .inputs import batches, held_out

REFERENCES = "references.npz"


@dataclass
class References:
    inputs: np.ndarray  # [n, 3, H, W] float16
    labels: list[str]
    logits: np.ndarray  # [n, classes] float32, PyTorch fp32 on inputs.astype(float32)
    kept: list[np.ndarray]  # per reduction, [n, k] kept-token indices (empty for dense models)
    fp16_sensitive: Optional[np.ndarray]  # [n] bool, or None for dense models


def store(model: torch.nn.Module, size: tuple[int, int], path: Path) -> References:
    """Run PyTorch on the held-out inputs (rounded to fp16) and write `path` (npz, compressed)."""
    from ..checks.compare import _rounding, _scored

    x, labels = held_out(model, size)
    x16 = x.half()
    xs = x16.float()
    (logits, *kept), decisions = _scored(model, xs)
    sensitive = _rounding(model, xs, kept, decisions).sensitive() if kept else None  # a token-reduction model
    refs = References(x16.numpy(), labels, logits.astype(np.float32), [k.astype(np.int16) for k in kept], sensitive)
    arrays = {"inputs": refs.inputs, "labels": np.array(labels), "logits": refs.logits}
    arrays.update({f"kept{i}": k for i, k in enumerate(refs.kept)})
    if sensitive is not None:
        arrays["fp16_sensitive"] = sensitive
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)
    return refs


def load(path: Path) -> Optional[References]:
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        kept = [z[f"kept{i}"] for i in range(sum(1 for k in z.files if k.startswith("kept")))]
        return References(z["inputs"], [str(s) for s in z["labels"]], z["logits"], kept,
                          z["fp16_sensitive"] if "fp16_sensitive" in z.files else None)


def check(
    refs: References,
    run: Runner,
    graph: str,
    precision: str,
    batch_sizes: list[int],
    runtime: str,
) -> list[StoredComparison]:
    """`run`'s logits (its first output) against the stored PyTorch logits, once per batch size."""
    x = torch.from_numpy(refs.inputs.astype(np.float32))
    n = x.shape[0]
    held = np.ones(n, dtype=bool)
    if precision == "fp16" and refs.fp16_sensitive is not None:
        held = ~refs.fp16_sensitive.astype(bool)
    left_out = int((~held).sum())
    rows = []
    for bs in batch_sizes:
        out = np.concatenate([np.asarray(run(c.numpy())[0], dtype=np.float32) for c in batches(x, bs)])[:n]
        if held.any():
            result = compare(refs.logits[held], out[held], graph, precision, bs)
        else:
            result = Comparison(graph, precision, bs, 0, 0.0, 0.0, 1.0, 1.0, 0, 1.0)
            result.warnings.append("no sample held to the thresholds: each has a token choice within fp16 rounding")
        if not np.isfinite(out).all() and "output contains NaN or Inf" not in result.failures:
            result.failures.append("output contains NaN or Inf")
        if left_out:
            result.warnings.append(f"{left_out}/{n} samples left out: a token choice on them is within fp16 rounding, "
                                   "and this runtime's token choices are not observable")
        rows.append(StoredComparison(**vars(result), runtime=runtime, left_out=left_out))
    return rows
