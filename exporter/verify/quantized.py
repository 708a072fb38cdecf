# SPDX-License-Identifier: Apache-2.0
"""Judging an 8-bit graph on data: its logits cannot match PyTorch's to a tolerance, so it is held to PyTorch's
accuracy on held-out images (disjoint from the ones it was calibrated on), next to the fp16 graph, and its token
choices to PyTorch fp32's, reduction by reduction.

Thresholds: top-1 within MAX_TOP1_DROP points of PyTorch fp32 on the same images. Token-choice agreement (the share
of the tokens PyTorch keeps that the graph keeps too, per reduction) is reported, not gated: a flip is legitimate
where 8-bit activations move a near-tie, and its cost shows in the top-1 it is gated on. On random weights there is
no accuracy to keep, and the record says so instead of passing or failing.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..methods.base import Traced
from ..runtime import onnx_runner
from ..stages.calibration import Calibration, batches
from .accuracy import score

MAX_TOP1_DROP = 1.0  # percentage points


def judge(model: torch.nn.Module, graph: Path, debug: Optional[Path], fp16: Optional[Path], calibration: Calibration,
          batch: int, weights: str, more: Sequence[tuple[Path, Optional[Path]]] = ()) -> dict:
    """Top-1/top-5 of PyTorch fp32, the fp16 graph and the 8-bit `graph` on the held-out images, the 8-bit graph's
    top-1 agreement with PyTorch and its token-choice agreement per reduction (from its `debug` twin). `more`: other
    8-bit graphs (the plugin graph's, with its debug twin) held to the same gate on the same images; their token-choice
    agreement is `token_choice_agreement_of[name]`."""
    if weights == "random":
        return {"judged": False, "reason": "random weights: accuracy cannot be judged (build with trained weights)"}
    x, y = calibration.tensors(calibration.held_out)
    with torch.no_grad():
        traced = [Traced(model)(torch.from_numpy(chunk)) for chunk in batches(x, batch)]
    reference = np.concatenate([t[0].float().numpy() for t in traced])[:len(y)]
    kept = [np.concatenate([t[i + 1].numpy() for t in traced])[:len(y)] for i in range(len(traced[0]) - 1)]
    rows = {"pytorch fp32": _scores(reference, y, reference)}
    agreement, failures = {}, []
    for path, twin in [(graph, debug), *more]:
        outputs = _run(twin or path, x, batch)
        rows[path.name] = _scores(outputs[0], y, reference)
        agreement[path.name] = [round(_shared(ours, theirs), 4) for ours, theirs in zip(outputs[1:], kept)] if twin else []
        drop = rows["pytorch fp32"]["top1"] - rows[path.name]["top1"]
        failures += [] if drop <= MAX_TOP1_DROP else [
            f"{path.name}: top-1 {rows[path.name]['top1']:.2f}% on {len(y)} held-out images is {drop:.2f} points below "
            f"PyTorch fp32's {rows['pytorch fp32']['top1']:.2f}% (allowed: {MAX_TOP1_DROP:g})"]
    if fp16 is not None:
        rows[fp16.name] = _scores(_run(fp16, x, batch)[0], y, reference)
    return {"judged": True, "images": int(len(y)), "threshold": f"top-1 within {MAX_TOP1_DROP:g} point of PyTorch fp32",
            "accuracy": rows, "token_choice_agreement": agreement.pop(graph.name),
            **({"token_choice_agreement_of": agreement} if agreement else {}), "failures": failures}


def _run(path: Path, x: np.ndarray, batch: int) -> list[np.ndarray]:
    run = onnx_runner(path)
    chunks = [run(chunk) for chunk in batches(x, batch)]
    return [np.concatenate([c[i] for c in chunks])[:len(x)] for i in range(len(chunks[0]))]


def _scores(logits: np.ndarray, labels: np.ndarray, reference: np.ndarray) -> dict:
    """`accuracy.score` as the calibration record words it: percentages, agreement with PyTorch fp32's top-1."""
    n = len(labels)
    s = score("", logits, labels, reference.argmax(1))
    return {"top1": s.top1, "top5": s.top5, "same_top1_as_pytorch": round(100 * s.top1_agreement / n, 3), "n": n}


def _shared(ours: np.ndarray, theirs: np.ndarray) -> float:
    """Mean share of `theirs`' kept tokens that `ours` keeps too (each row a set of token indices)."""
    ours, theirs = ours.reshape(len(ours), -1), theirs.reshape(len(theirs), -1)
    return float(np.mean([len(set(a) & set(b)) / max(1, len(set(b))) for a, b in zip(ours, theirs)]))
