# SPDX-License-Identifier: Apache-2.0
"""Latency as DiffRate's search cost: a table of measured block latencies per token count, fitted smoothly.

`bench.block_latency` measures, on the runtime, the attention half (x + attn(norm1(x))) and the MLP half
(x + mlp(norm2(x))) of one block at a grid of token counts, and the part outside the blocks once. Each half is
fitted by `monotone_fit`: c0 + c1 n + c2 n^2 with every coefficient >= 0, by least squares. Why that form: the
halves' matrix products are linear (projections, MLP) and quadratic (QK^T, AV) in n, so the basis is the FLOPs
count's; non-negative coefficients make the fit non-decreasing for n >= 0 (fewer tokens never cost more, so the
search never learns to keep tokens for speed) and smooth, with a gradient everywhere, where the measured medians are
noisy and a few cache steps would make an interpolation jagged. A block then costs attention(entering tokens) +
MLP(leaving tokens), the same `BlockCost(n_in, keep, out)` the FLOPs cost is, so one search loop serves both.

The halves timed apart do not add up to a whole model: the whole exported graph runs its blocks slower (or faster)
than the same blocks called alone, and its reductions (ranking, gathers, merge MatMuls) cost something of their own.
`whole_fit` calibrates the sum of the halves on whole exported models: whole = constant + scale x (sum of the blocks'
fitted halves) + reduction x (blocks that reduce), three unknowns from three whole models that tell them apart (see
`whole_fit`). A block then costs scale x (its halves) + reduction if it reduces, and the model the constant besides.
"""
from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

import numpy as np

from .diffrate_search import BlockCost


def nonnegative_lstsq(basis: np.ndarray, y: np.ndarray) -> np.ndarray:
    """x >= 0 minimising |basis x - y|^2 (non-negative least squares), solved exactly for a few columns by trying
    every subset of them: the optimum is the unconstrained least squares on its support."""
    best, best_error = np.zeros(basis.shape[1]), float(np.sum(y * y))
    for size in range(1, basis.shape[1] + 1):
        for support in itertools.combinations(range(basis.shape[1]), size):
            coef = np.zeros(basis.shape[1])
            coef[list(support)] = np.linalg.lstsq(basis[:, support], y, rcond=None)[0]
            if (coef < 0).any():
                continue
            error = float(np.sum((basis @ coef - y) ** 2))
            if error < best_error:
                best, best_error = coef, error
    return best


def monotone_fit(tokens: Sequence[float], ms: Sequence[float]) -> list[float]:
    """[c0, c1, c2] >= 0 minimising sum (c0 + c1 n + c2 n^2 - ms)^2."""
    n = np.asarray(tokens, dtype=np.float64)
    y = np.asarray(ms, dtype=np.float64)
    if len(n) != len(y) or len(n) < 3:
        raise ValueError(f"a fit needs at least 3 (tokens, ms) pairs, got {len(n)} and {len(y)}")
    return [float(c) for c in nonnegative_lstsq(np.stack([np.ones_like(n), n, n * n], axis=1), y)]


def whole_fit(blocks_ms: Sequence[float], reductions: Sequence[int],
              whole_ms: Sequence[float]) -> tuple[float, float, float]:
    """(constant, scale, reduction), all >= 0, minimising sum (constant + scale x blocks + reduction x reductions -
    whole)^2 over whole models: `blocks_ms` the sum of each model's fitted halves, `reductions` how many of its blocks
    reduce, `whole_ms` its measured latency.

    Why these three: a constant alone (the first version) keeps the whole excess of the dense graph over its halves in
    a model with half the block work, and a measured schedule with half the blocks' time ran 13% under its fit; the
    excess grows with the blocks' work, so a scale on the halves, and a reduction has a cost of its own. They are
    told apart by a dense model (no reduction), a model removing two tokens per block (every block but the first
    reduces, the blocks' work barely less: the reduction) and one removing tokens down to 2 (the same reductions, half
    the blocks' work: the scale, and with the dense model the constant): the three rows (1, blocks, reductions) are
    independent, so three models solve it exactly, more by least squares. For a schedule that reduces in every block
    after the first, as the search's do at most budgets, the fit then interpolates between the two reduced models
    measured whole, in the blocks' work: the halving model brackets the budgets that matter. Non-negative because a negative constant or
    reduction cost is noise, and a negative scale would make keeping tokens pay; a zero scale (latency not falling
    with tokens) leaves the search nothing to learn, and the caller refuses it."""
    basis = np.stack([np.ones(len(blocks_ms)), np.asarray(blocks_ms, np.float64),
                      np.asarray(reductions, np.float64)], 1)
    if len(whole_ms) != len(basis) or np.linalg.matrix_rank(basis) < 3:
        raise ValueError("whole_fit needs whole models whose (1, blocks_ms, reductions) rows span all three unknowns, "
                         f"got {basis.tolist()} for {list(whole_ms)}")
    constant, scale, reduction = nonnegative_lstsq(basis, np.asarray(whole_ms, np.float64))
    return float(constant), float(scale), float(reduction)


def polynomial(coef: Sequence[float], n):
    """c0 + c1 n + c2 n^2, for floats and tensors (the gradient flows through n)."""
    return coef[0] + coef[1] * n + coef[2] * n * n


@dataclass
class LatencyTable:
    """What `bench.block_latency.measure` measured, and the fits the search uses (stored in the schedule file).

    Medians are per call of one batch, in ms, the runtime's per-call overhead (`overhead_ms`, a graph that only
    slices its input) subtracted from the block halves: in the model the halves run inside one call. The calibration
    on whole models (`whole_fit`: `fixed_ms`, `scale`, `reduction_ms`) came later: a table without `scale` (an older
    schedule file) loads as scale 1, the constant and reduction cost it was searched with."""

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
    # the whole exported models the halves are calibrated on (`bench.block_latency.measure`): dense, removing two
    # tokens per block, and removing tokens down to 2 in the last block
    dense_ms: float = 0.0
    reducing_ms: float = 0.0
    halving_ms: Optional[float] = None
    fixed_ms: Optional[float] = None  # the cost outside the blocks the search uses (`outside_ms` when None)
    scale: float = 1.0  # whole-model ms per ms of the halves timed apart
    attention_fit: list[float] = field(default_factory=list)  # [c0, c1, c2], filled by `fitted`
    mlp_fit: list[float] = field(default_factory=list)

    def fitted(self) -> "LatencyTable":
        self.attention_fit = monotone_fit(self.grid, self.attention_ms)
        self.mlp_fit = monotone_fit(self.grid, self.mlp_ms)
        return self

    def record(self) -> dict:
        return asdict(self)


def blocks_ms(table: LatencyTable, tokens: int, leaving: Sequence[int]) -> tuple[float, int]:
    """(the sum of the fitted halves, the blocks that reduce) of a model whose blocks leave `leaving` tokens of
    `tokens`: the uncalibrated parts `whole_fit` scales."""
    total, reductions, n = 0.0, 0, tokens
    for out in leaving:
        total += polynomial(table.attention_fit, n) + polynomial(table.mlp_fit, out)
        reductions, n = reductions + (out < n), out
    return float(total), reductions


def latency_cost(table: LatencyTable) -> tuple[BlockCost, float]:
    """(block cost in ms, the constant outside the blocks): the scaled attention at the entering tokens and MLP at
    the leaving ones (a block's reduction runs between them), plus the reduction's cost in a block that reduces.
    The scale is positive and the fits non-decreasing, so the cost is smooth and never falls with more tokens."""
    attention, mlp, reduction, scale = table.attention_fit, table.mlp_fit, table.reduction_ms, table.scale
    if not attention or not mlp:
        raise ValueError("latency_cost needs a fitted table (LatencyTable.fitted())")

    def fn(n_in, keep, out):
        return scale * (polynomial(attention, n_in) + polynomial(mlp, out)) + reduction * (out < n_in)

    return BlockCost(fn, "ms"), table.outside_ms if table.fixed_ms is None else table.fixed_ms
