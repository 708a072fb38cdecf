# SPDX-License-Identifier: Apache-2.0
"""How far PyTorch's token choices were from tipping, and whether fp16 rounding can tip them.

Every token choice carries what verification reads here (`ops.reference`, `decisions()`): fp32 scores in
rows and the candidates taken in each row (top-k class attention; ToMe's merged tokens and each one's
partner; DiffRate's kept tokens, its unmerged head and each merged token's destination). Then:

- a choice's *margin* is the lowest score taken minus the highest score left, the smallest over its
  rows: for PyTorch's own choice the gap at the cut (>= 0). For another run's choice replayed by
  PyTorch fp32 (same tokens, fp32 scores) it is negative where that run chose against the scores, by
  the score margin it overturned (the gap at the cut when it swapped the two candidates there, more
  when it reached further);
- the fp16 *error* of a choice's scores is max |score_fp16 - score_fp32| over the candidates near
  the cut (`error`), both runs scoring the same tokens in the same layout. Rounding swaps candidates
  i and j only if s_i - s_j <= e_i + e_j <= 2 * error, so a margin within twice the error is a
  near-tie: the analogue of the decisive-logit rule (`parity.NEAR_TIE`). An fp16 graph's own error is
  measured against PyTorch fp32 replaying its choices, from the scores its debug run outputs (the
  debug export's extra outputs; for plugin nodes, the reference running them in onnxruntime). Where
  they are not observable (a target's engine, for the stored references), PyTorch's half model
  replaying fp32's choices estimates it: one half-precision run's rounding standing for another's (its
  products at fp32 speed, `checks.half`).
  On DeiT-S DiffRate, onnxruntime's own error was 0.14-2.7x that estimate (5th-95th percentile over
  every choice of the held-out samples; at most 5.9x).

Choices depend on earlier ones, so a sample is judged at the first choice that differs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .parity import NEAR_TIE, Cut


@dataclass(frozen=True)
class Decision:
    """One token choice of a forward pass, for every sample."""

    reduction: int  # 0-based, in the order the model reduces
    what: str  # e.g. "kept tokens", "merge partners"
    scores: np.ndarray  # [n, R, C] fp32
    chosen: np.ndarray  # [n, R, k] indices into C taken in each row


def join(calls: list[list[tuple]], n: int) -> list[Decision]:
    """The decisions `runtime.torch_runner` collected, one list per call (batch), as one Decision per choice
    over the first `n` samples."""
    if not calls:
        return []
    return [
        Decision(r, what, np.concatenate([c[i][2] for c in calls])[:n], np.concatenate([c[i][3] for c in calls])[:n])
        for i, (r, what, _, _) in enumerate(calls[0])
    ]


def _cut(d: Decision) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(scores, taken mask [n, R, C], lowest score taken, highest score left [n, R])."""
    s = d.scores.astype(np.float64)
    taken = np.zeros(s.shape, dtype=bool)
    np.put_along_axis(taken, d.chosen.astype(np.int64), True, axis=-1)
    return s, taken, np.where(taken, s, np.inf).min(axis=-1), np.where(taken, -np.inf, s).max(axis=-1)


def margin(d: Decision) -> np.ndarray:
    """[n]: lowest score taken minus highest score left, smallest over the rows (inf: nothing left to take)."""
    _, _, low, high = _cut(d)
    with np.errstate(invalid="ignore"):  # -inf - -inf: a row with only -inf scores (ToMe's class token) decides nothing
        gaps = low - high
    gaps[np.isnan(gaps)] = np.inf
    return gaps.min(axis=-1, initial=np.inf)


def error(fp32: Decision, fp16: Decision) -> np.ndarray:
    """[n]: the fp16 error at fp32's cut: max |fp16 score - fp32 score| over the candidates that rounding as
    large as their row's largest error could move across the row's cut (taken ones less than twice that above
    the highest one left, left ones as close below the lowest taken) and the two that set the margin (at the
    cut of the row with the smallest gap). Only those can swap, and scores far from the cut (the top class
    attention) round by more."""
    s, taken, low, high = _cut(fp32)
    t = fp16.scores.astype(np.float64)
    finite = np.isfinite(s) & np.isfinite(t)
    diff = np.abs(np.where(finite, s, 0.0) - np.where(finite, t, 0.0))
    with np.errstate(invalid="ignore"):
        gap = low - high
        reach = NEAR_TIE * diff.max(axis=-1)
        if gap.shape[-1]:
            tightest = np.arange(gap.shape[-1]) == np.nan_to_num(gap, nan=np.inf).argmin(axis=-1)[:, None]
            reach = np.where(tightest, np.maximum(reach, gap), reach)
        near = finite & np.where(taken, s - high[..., None] <= reach[..., None], low[..., None] - s <= reach[..., None])
    return np.where(near, diff, 0.0).reshape(diff.shape[0], -1).max(axis=-1, initial=0.0)


@dataclass
class Rounding:
    """PyTorch fp32's choices on the held-out samples and the fp16 error of each one's scores."""

    decisions: list[Decision]
    errors: list[np.ndarray]  # per decision, [n]
    estimated: bool = False  # by the half model, standing for a graph whose scores are not observable

    @classmethod
    def measure(cls, fp32: list[Decision], fp16: list[Decision], estimated: bool = False) -> "Rounding":
        """From fp32's decisions and an fp16 run's scores on the same tokens (a graph's own, against PyTorch
        fp32 replaying the graph's choices; or, `estimated`, the half model replaying fp32's choices)."""
        return cls(fp32, [error(a, b) for a, b in zip(fp32, fp16)], estimated)

    def closeness(self) -> np.ndarray:
        """[n]: each sample's smallest margin over its choices, in units of that choice's fp16 error (inf where
        nothing was chosen or no score rounded; 0 for an exact tie)."""
        n = self.decisions[0].scores.shape[0] if self.decisions else 0
        ratios = []
        for d, e in zip(self.decisions, self.errors):
            m = margin(d)
            ratios.append(np.divide(m, e, out=np.where(m > 0, np.inf, 0.0), where=e > 0))
        return np.min(ratios, axis=0) if ratios else np.full(n, np.inf)

    def sensitive(self) -> np.ndarray:
        """[n]: samples with a choice whose margin is within NEAR_TIE x its fp16 error, where an fp16 runtime may
        legitimately keep other tokens (a flip starts at such a choice: until one tips, the runs agree)."""
        return self.closeness() <= NEAR_TIE

    def first_cuts(self, replayed: list[Decision], flipped: np.ndarray) -> list[Cut]:
        """For each flipped sample, the first choice of `replayed` (PyTorch fp32 replaying another run's choices)
        that goes against its scores: the margin it overturned and the fp16 error of those scores. A flipped
        sample without one differs in token order only, which replaying reproduces exactly, and gets no cut."""
        against = np.array([-margin(d) for d in replayed]).reshape(len(replayed), -1)  # [decisions, n]
        cuts: list[Cut] = []
        for i in np.flatnonzero(flipped):
            first: Optional[int] = next((j for j in range(len(replayed)) if against[j, i] > 0), None)
            if first is not None:
                d = replayed[first]
                error = float(self.errors[first][i])
                cuts.append(Cut(int(i), d.reduction + 1, d.what, float(against[first, i]), error, self.estimated))
        return cuts
