# SPDX-License-Identifier: Apache-2.0
"""PyTorch's answers stored in the bundle (references.npz), so a target without the workstation's
PyTorch model can be held to the same thresholds.

`build` writes the held-out inputs (fp16, which halves the file; PyTorch ran on exactly these values
widened to fp32, so nothing is lost), PyTorch fp32's logits, for token-reduction models the kept-token
indices of every reduction, `fp16_closeness`: each sample's smallest fp32 score margin over its token
choices in units of the fp16 error of those scores (`checks.margins`; the error is PyTorch half's, an
estimate), and `fp16_sensitive`: the samples whose closeness is within NEAR_TIE, where fp16 may tip a
choice. Where those are most of the held-out inputs, seeded random images are added until FP16_HELD
samples are not.

`check` runs any runtime (onnxruntime here, a TensorRT engine on the target) on the stored inputs
and compares with `parity.compare`, the same thresholds and report rows as the onnxruntime parity
check. A deployment graph has no kept-index outputs, so a runtime's token choices are not observable
here; the flip rule becomes: in fp16, samples marked `fp16_sensitive` (where a near-tie may legitimately
tip) are left out of the thresholds and counted in the row; every other sample is held to them. A
failing row names its failing samples with their closeness: a few units may be a near-tie that the
estimate understated (it is another half-precision run's rounding, not the runtime's), tens point to
the runtime.
"""
from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from ..bundle import References, write_references
from ..checks.compare import TorchAnswers, _rounding
from ..checks.inputs import PHOTOS, RANDOM_SEED, batches, held_out, random_images
from ..checks.parity import NEAR_TIE, Comparison, StoredComparison, compare, failing
from ..runtime import Runner

FP16_HELD = 16  # samples an fp16 check on stored references should hold to the thresholds
MAX_SAMPLES = 48  # a cap on the file: DeiT-S inputs are ~300 KB each in fp16
TOP_UP = 8  # extra random images per round when too many samples are fp16-sensitive


def store(model: torch.nn.Module, size: tuple[int, int], bundle: Path, answers: Optional[TorchAnswers] = None) -> References:
    """Run PyTorch on the held-out inputs (fp16 values) and write them into `bundle` (references.npz); `answers`:
    PyTorch's answers, where the build's parity check asks for the same.

    A target cannot observe its engine's token choices, so its fp16 check holds only the samples with no
    choice within fp16 rounding; where the held-out inputs leave fewer than FP16_HELD of those (DiffRate
    has choices near the cut on most inputs), more seeded random images are added, up to MAX_SAMPLES."""
    x, labels = held_out(model, size)
    half = functools.cache(lambda: copy.deepcopy(model).half())  # one copy for every round's fp16 error estimate
    answers = answers or TorchAnswers(model)
    logits, kept, closeness = _answers(answers, half, x)
    while closeness is not None and len(labels) < MAX_SAMPLES and (closeness > NEAR_TIE).sum() < FP16_HELD:
        first = len(labels) - len(PHOTOS)
        extra = random_images(TOP_UP, size, seed=RANDOM_SEED + first)
        more_logits, more_kept, more_closeness = _answers(answers, half, extra)
        x, labels = torch.cat([x, extra]), labels + [f"random:{first + i}" for i in range(TOP_UP)]
        logits = np.concatenate([logits, more_logits])
        kept = [np.concatenate(pair) for pair in zip(kept, more_kept)]
        closeness = np.concatenate([closeness, more_closeness])
    sensitive = None if closeness is None else closeness <= NEAR_TIE
    refs = References(x.half().numpy(), labels, logits, kept, sensitive, closeness)
    write_references(bundle, refs)
    return refs


def _answers(answers: TorchAnswers, half: Callable[[], torch.nn.Module], x: torch.Tensor) -> tuple[np.ndarray, list[np.ndarray], Optional[np.ndarray]]:
    """PyTorch fp32's logits and kept indices on `x` rounded to fp16, and how close each sample's token
    choices are to fp16 rounding (None for a dense model; `half()`: the model in half precision)."""
    xs = x.half().float()
    (logits, *kept), decisions = answers(xs)
    closeness = _rounding(answers.model, xs, kept, decisions, half()).closeness().astype(np.float32) if kept else None
    return logits.astype(np.float32), [k.astype(np.int16) for k in kept], closeness


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
        named = _failing_samples(refs, held, out, precision) if result.failures else ""
        if named:
            result.failures.append(named)
        if left_out:
            result.warnings.append(f"{left_out}/{n} samples left out: a token choice on them is within fp16 rounding, "
                                   "and this runtime's token choices are not observable")
        rows.append(StoredComparison(**vars(result), runtime=runtime, left_out=left_out))
    return rows


SHOWN = 6  # failing samples a failure sentence names


def _failing_samples(refs: References, held: np.ndarray, out: np.ndarray, precision: str) -> str:
    """One sentence naming the held samples that miss the thresholds on their own, in fp16 with their closeness
    ("" if none does)."""
    index = np.flatnonzero(held)[failing(refs.logits[held], out[held], precision)]
    if not index.size:
        return ""
    close = precision == "fp16" and refs.fp16_closeness is not None
    if close:  # the closest to rounding first: those are the likeliest near-ties
        index = index[np.argsort(refs.fp16_closeness[index], kind="stable")]
    names = [refs.labels[i] + (f" ({refs.fp16_closeness[i]:.3g}x)" if close else "") for i in index[:SHOWN]]
    more = f" and {index.size - SHOWN} more" if index.size > SHOWN else ""
    said = f"failing samples: {', '.join(names)}{more}"
    if close:
        said += (f" (x: the sample's smallest fp32 token-score margin in units of PyTorch half's estimated fp16 error "
                 f"of those scores; above {NEAR_TIE:g} it was held. A few units may be a near-tie the estimate "
                 "understated, tens point to this runtime)")
    return said
