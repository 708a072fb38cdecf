# SPDX-License-Identifier: Apache-2.0
"""Latency as DiffRate's search cost: a table of measured block latencies per token count, fitted smoothly.

`bench.block_latency` measures, on the runtime, the attention half (x + attn(norm1(x))) and the MLP half
(x + mlp(norm2(x))) of one block at a grid of token counts, and the part outside the blocks once. Each half is
fitted by `monotone_fit`: c0 + c1 n + c2 n^2 with every coefficient >= 0, by least squares. Why that form: the
halves' matrix products are linear (projections, MLP) and quadratic (QK^T, AV) in n, so the basis is the FLOPs
count's; non-negative coefficients make the fit non-decreasing for n >= 0 (fewer tokens never cost more, so the
search never learns to keep tokens for speed) and smooth, with a gradient everywhere, where the measured medians are
noisy and a few cache steps would make an interpolation jagged. A block then costs attention(entering tokens) +
MLP(leaving tokens), plus the measured cost of a reduction in a block that reduces (a step, as the FLOPs cost's
class-attention row), the same `BlockCost(n_in, keep, out)` the FLOPs cost is, so one search loop serves both.
"""
from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

import numpy as np

from .diffrate_search import BlockCost


def monotone_fit(tokens: Sequence[float], ms: Sequence[float]) -> list[float]:
    """[c0, c1, c2] >= 0 minimising sum (c0 + c1 n + c2 n^2 - ms)^2: non-negative least squares, solved exactly by
    trying every subset of the three terms (the optimum is the unconstrained least squares on its support)."""
    n = np.asarray(tokens, dtype=np.float64)
    y = np.asarray(ms, dtype=np.float64)
    if len(n) != len(y) or len(n) < 3:
        raise ValueError(f"a fit needs at least 3 (tokens, ms) pairs, got {len(n)} and {len(y)}")
    basis = np.stack([np.ones_like(n), n, n * n], axis=1)
    best, best_error = np.zeros(3), float(np.sum(y * y))
    for size in (1, 2, 3):
        for support in itertools.combinations(range(3), size):
            coef = np.zeros(3)
            coef[list(support)] = np.linalg.lstsq(basis[:, support], y, rcond=None)[0]
            if (coef < 0).any():
                continue
            error = float(np.sum((basis @ coef - y) ** 2))
            if error < best_error:
                best, best_error = coef, error
    return [float(c) for c in best]


def polynomial(coef: Sequence[float], n):
    """c0 + c1 n + c2 n^2, for floats and tensors (the gradient flows through n)."""
    return coef[0] + coef[1] * n + coef[2] * n * n


@dataclass
class LatencyTable:
    """What `bench.block_latency.measure` measured, and the fits the search uses (stored in the schedule file).

    Medians are per call of one batch, in ms, the runtime's per-call overhead (`overhead_ms`, a graph that only
    slices its input) subtracted from the block halves: in the model the halves run inside one call."""

    runtime: str
    batch: int
    threads: int
    grid: list[int]  # token counts (class token included)
    attention_ms: list[float]
    mlp_ms: list[float]
    outside_ms: float  # patch embedding, position embedding, final norm and head, one call (overhead included)
    overhead_ms: float
    rounds: int
    iterations: int
    machine: dict = field(default_factory=dict)
    reduction_ms: float = 0.0  # what one block's token reduction costs beyond its halves (ranking, gather, merge)
    dense_ms: float = 0.0  # the whole exported models it was measured on: dense, and removing a token per block
    reducing_ms: float = 0.0
    fixed_ms: Optional[float] = None  # the cost outside the blocks the search uses (`outside_ms` when None)
    attention_fit: list[float] = field(default_factory=list)  # [c0, c1, c2], filled by `fitted`
    mlp_fit: list[float] = field(default_factory=list)

    def fitted(self) -> "LatencyTable":
        self.attention_fit = monotone_fit(self.grid, self.attention_ms)
        self.mlp_fit = monotone_fit(self.grid, self.mlp_ms)
        return self

    def record(self) -> dict:
        return asdict(self)


def latency_cost(table: LatencyTable) -> tuple[BlockCost, float]:
    """(block cost in ms, the constant outside the blocks): attention at the entering tokens, the MLP at the
    leaving ones (a block's reduction runs between them)."""
    attention, mlp, reduction = table.attention_fit, table.mlp_fit, table.reduction_ms
    if not attention or not mlp:
        raise ValueError("latency_cost needs a fitted table (LatencyTable.fitted())")

    def fn(n_in, keep, out):
        return polynomial(attention, n_in) + polynomial(mlp, out) + reduction * (out < n_in)

    return BlockCost(fn, "ms"), table.outside_ms if table.fixed_ms is None else table.fixed_ms
