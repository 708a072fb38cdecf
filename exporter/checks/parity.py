# SPDX-License-Identifier: Apache-2.0
"""How close an exported graph's logits are to PyTorch's, and whether that is close enough.

Thresholds (fp32 vs PyTorch fp32): max abs logit error <= 1e-4 and 100% top-1 agreement.
fp16: min cosine >= 0.999 and 100% top-1 agreement on *decisive* samples, those whose fp32
top-1/top-2 margin exceeds twice the sample's fp16 error (below that, rounding alone can swap the
two logits; random weights make such near-ties common, so we report how many samples counted).

Token-reduction models choose tokens discretely. A sample whose kept-token sets differ between
the two runtimes is a *token flip*: an exact tie or a bug in fp32 (the runtimes differ by ~1e-6),
and in fp16 also a near-tie that rounding of the hidden states legitimately tips (common with
random weights, whose attention is nearly uniform). A flip taken for a tie is checked against
PyTorch *replaying* the graph's choices (`forward_traced` with `replay`), so every sample is held to the
thresholds: the graph must compute what PyTorch computes with the same tokens. A flip is taken
for a tie in fp32 unless flips are on most samples (then it is a bug, and the check fails). In
fp16 it is judged by the same rule as a top-1 swap (`checks.margins`): at the first choice where
the graph's tokens differ, the fp32 score margin its choice overturns (the gap between the lowest
candidate kept and the highest dropped, at the cut) must be within twice the fp16 error of those
scores (PyTorch's half model against fp32, on that sample and choice). Later choices depend on that
one and are not judged. A flip with a clearer margin is a bug: the check fails with a sentence
naming the sample, the reduction and the margin (`Cut`). A check with no decisive sample passes
with a warning, so a report never claims a top-1 agreement it did not test.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

import numpy as np

from ..bundle import from_record

FP32_MAX_ABS = 1e-4
FP16_MIN_COSINE = 0.999
MAX_FLIP_FRACTION = 0.5
NEAR_TIE = 2.0  # a margin within this many fp16 errors can be tipped by rounding (logits and token scores)


@dataclass(frozen=True)
class Cut:
    """Where a flipped sample's tokens first differ from PyTorch fp32's: the choice, the fp32 score margin the
    graph's choice overturned there and the fp16 error of those scores: the graph's own, or `estimated` by
    PyTorch's half model where the graph's scores are not observable (see checks.margins)."""

    sample: int
    reduction: int  # 1-based
    what: str  # the choice, e.g. "kept tokens"
    margin: float
    error: float
    estimated: bool = False

    @property
    def near_tie(self) -> bool:
        return self.margin <= NEAR_TIE * self.error

    def failure(self) -> str:
        return (
            f"sample {self.sample}'s {self.what} at reduction {self.reduction} differ from PyTorch fp32's against an "
            f"fp32 score margin of {self.margin:.3g}, more than {NEAR_TIE:g}x the fp16 error of those scores "
            f"({self.error:.3g}{', estimated by PyTorch half' if self.estimated else ''}): not a near-tie"
        )


@dataclass
class Comparison:
    graph: str  # e.g. "model.onnx"
    precision: str
    batch: int
    samples: int
    max_abs: float
    max_rel: float  # max abs error / max |reference logit|, per sample, worst sample
    min_cosine: float
    top1_agreement: float
    decisive: int
    decisive_top1_agreement: float
    token_flips: Optional[int] = None
    replayed_flips: Optional[int] = None  # flips taken for ties, checked against PyTorch replaying them
    cuts: list[dict] = field(default_factory=list)  # fp16 flips: where each first differs, its margin and error
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # the check passed but proved little
    ran: str = ""  # what ran, where not `graph` itself: its debug twin, from which the build cut it (checks.compare)

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def named(self) -> str:
        """The graph's name, with what ran for it where that was not the graph itself."""
        return f"{self.graph} ({self.ran})" if self.ran else self.graph

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}

    @classmethod
    def from_dict(cls, record: dict) -> "Comparison":
        return from_record(cls, record)


@dataclass
class StoredComparison(Comparison):
    """A runtime on the PyTorch references stored in the bundle (verify.references): which runtime ran, and
    how many samples were left out of the thresholds (fp16 near-ties a deployment graph cannot show)."""

    runtime: str = ""
    left_out: int = 0


def compare(
    reference: np.ndarray,
    candidate: np.ndarray,
    graph: str,
    precision: str,
    batch: int,
    flipped: Optional[np.ndarray] = None,
    replayed: Optional[np.ndarray] = None,
    cuts: Sequence[Cut] = (),
    ran: str = "",
) -> Comparison:
    """Compare [samples, classes] logits; `flipped` marks samples whose kept-token sets differ from
    PyTorch's, `replayed` the flipped samples whose reference is PyTorch replaying the candidate's
    token choices (taken for ties), `cuts` where flipped samples first differ (fp16): each that is
    no near-tie fails the check; `ran`: what ran, where not `graph` itself (Comparison.ran)."""
    ref = reference.astype(np.float64)
    n = ref.shape[0]
    flips = np.zeros(n, dtype=bool) if flipped is None else flipped.astype(bool)
    ties = flips & (np.zeros(n, dtype=bool) if replayed is None else replayed.astype(bool))
    err, cos, agree, decisive = _per_sample(reference, candidate)
    scale = np.maximum(np.abs(ref).max(axis=1), 1e-12)
    result = Comparison(
        graph=graph,
        precision=precision,
        batch=batch,
        samples=n,
        max_abs=float(err.max()),
        max_rel=float((err / scale).max()),
        min_cosine=float(cos.min()),
        top1_agreement=float(agree.mean()),
        decisive=int(decisive.sum()),
        decisive_top1_agreement=float(agree[decisive].mean()) if decisive.any() else 1.0,
        token_flips=None if flipped is None else int(flips.sum()),
        replayed_flips=None if flipped is None else int(ties.sum()),
        cuts=[{**asdict(c), "near_tie": c.near_tie} for c in cuts],
        ran=ran,
    )
    if not np.isfinite(candidate).all():
        result.failures.append("output contains NaN or Inf")
    if precision == "fp32" and flips.mean() > MAX_FLIP_FRACTION:
        result.failures.append(
            f"kept-token sets differ from PyTorch on {flips.sum()}/{n} samples: too many to be near-ties"
        )
    if precision == "fp32":
        if result.max_abs > FP32_MAX_ABS:
            result.failures.append(f"max abs error {result.max_abs:.3g} > {FP32_MAX_ABS:g}")
        if result.top1_agreement < 1.0:
            result.failures.append(f"top-1 agreement {result.top1_agreement:.1%} < 100%")
    else:
        if result.min_cosine < FP16_MIN_COSINE:
            result.failures.append(f"min cosine similarity {result.min_cosine:.5f} < {FP16_MIN_COSINE}")
        result.failures.extend(c.failure() for c in cuts if not c.near_tie)
        if result.decisive_top1_agreement < 1.0:
            result.failures.append(
                f"top-1 agreement on decisive samples {result.decisive_top1_agreement:.1%} < 100%"
            )
        if result.decisive == 0:
            result.warnings.append(
                "top-1 agreement not checked: no sample's top-1/top-2 margin exceeds twice its fp16 error"
            )
    return result


def failing(reference: np.ndarray, candidate: np.ndarray, precision: str) -> np.ndarray:
    """[samples]: which samples on their own miss the thresholds `compare` holds the batch to (NaN or Inf;
    fp32: the max abs error or top-1; fp16: the cosine or, where decisive, top-1), so a failure can name them."""
    err, cos, agree, decisive = _per_sample(reference, candidate)
    bad = ~np.isfinite(candidate).all(axis=1)
    if precision == "fp32":
        return bad | (err > FP32_MAX_ABS) | ~agree
    return bad | (cos < FP16_MIN_COSINE) | (decisive & ~agree)


def _per_sample(reference: np.ndarray, candidate: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per sample: (max abs logit error, cosine, top-1 agreement, decisive: the fp32 top-1/top-2 margin is
    more than NEAR_TIE x the error, so rounding alone cannot swap them)."""
    ref = reference.astype(np.float64)
    cand = candidate.astype(np.float64)
    err = np.abs(cand - ref).max(axis=1)
    cos = (ref * cand).sum(1) / np.maximum(np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1), 1e-30)
    top2 = np.sort(ref, axis=1)[:, -2:]
    return err, cos, ref.argmax(1) == cand.argmax(1), top2[:, 1] - top2[:, 0] > NEAR_TIE * err
