# SPDX-License-Identifier: Apache-2.0
"""Run PyTorch and onnxruntime on the same held-out inputs and compare every graph of a bundle.

Plugin graphs run in onnxruntime with their plugin nodes computed by the token ops' reference
(`runtime.op_reference`), held to the same thresholds. For token-reduction models the kept-token
indices are compared too, through each graph's debug
twin (the same export with the chosen indices as extra outputs, see export.graphs), so a sample
whose logits moved because a near-tie flipped a token is told apart from a broken graph: such a
sample is compared with PyTorch replaying onnxruntime's choices (see checks.parity). In fp16 a flip
is a near-tie only where PyTorch fp32's scores were within rounding of the graph's choice: the
graph's own score error against PyTorch fp32 on the same tokens, from the scores its debug twin
outputs (a plugin graph's come from the reference running its nodes; see checks.margins).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from ..export.graphs import Graph
from ..runtime import Runner, onnx_runner, torch_runner
from ..spec import BatchRange
from .inputs import batches, held_out, once_per_input
from . import margins
from .half import fp32_products
from .parity import Comparison, compare


TORCH_BATCH = 8  # PyTorch's result does not depend on the batch, beyond rounding
TWIN = "its debug twin"  # what ran for a graph's row where the twin stood for it (Comparison.ran)


def verify_batches(batch: BatchRange) -> list[int]:
    """The batch sizes to check: the range's min, opt and max (each once), so both ends of a dynamic range
    are run; a fixed batch is its only size."""
    return sorted({batch.min, batch.opt, batch.max})


def compare_graphs(
    model: torch.nn.Module,
    bundle: Path,
    graphs: list[Graph],
    batch: BatchRange,
    img_size: tuple[int, int],
    threads: Optional[int] = None,
    open_graph: Optional[Callable[[Path], Runner]] = None,
    cut_from_twins: bool = False,
    answers: Optional["TorchAnswers"] = None,
) -> list[Comparison]:
    """Every graph against PyTorch on the held-out inputs, at each of `verify_batches(batch)`; `open_graph` opens a
    bundle graph (default: a new onnxruntime session with `threads`), so a caller can reuse its sessions.

    `cut_from_twins`: each graph with a debug twin was cut from it in this run (`build`; not so in `verify`, whose
    bundle may come from elsewhere), so the graph's nodes are the twin's, less those that only feed the kept-token
    outputs. The graph itself then runs at the range's opt batch, and at the other sizes the twin's logits, which it
    outputs anyway, stand for it (the row says so): the same nodes, run once instead of twice. `answers`: PyTorch's
    answers where other checks ask for them too (the build's stored references, on the same held-out images)."""
    x, _ = held_out(model, img_size)
    n = x.shape[0]
    (ref, *ref_idx), decisions = (answers or TorchAnswers(model))(x)
    estimate: Optional[margins.Rounding] = None  # the half model's, made only for a graph whose scores cannot be seen
    # PyTorch replaying onnxruntime's choices, run once for every graph and batch size making them
    replayed_by_torch = once_per_input(lambda chosen: _scored(model, x, chosen))

    results = []
    for g in graphs:
        graph = open_graph(bundle / g.file) if open_graph else onnx_runner(bundle / g.file, threads)
        debug = onnx_runner(g.debug, threads, scores=g.precision == "fp16") if g.debug else None
        for bs in verify_batches(batch):
            flips = ties = None
            cuts: list = []
            reference = ref
            twin = _outputs(debug, x, bs) if debug is not None else None
            by_twin = cut_from_twins and twin is not None and bs != batch.opt
            (out,) = twin[:1] if by_twin else _outputs(graph, x, bs)
            if twin is not None:
                ort_idx, ort_scores = twin[1:1 + len(ref_idx)], twin[1 + len(ref_idx):]
                flips = ties = _flipped(n, ref_idx, ort_idx)
                if flips.any():  # PyTorch with onnxruntime's choices: what the graph should have computed
                    (replayed, *_), chosen = replayed_by_torch(ort_idx)
                    if g.precision == "fp16":  # a tie only where fp16 rounding can tip the first differing choice
                        if len(ort_scores) == len(chosen):
                            errors = _measured(chosen, ort_scores)
                        else:
                            estimate = estimate or _rounding(model, x, ref_idx, decisions)
                            errors = estimate
                        cuts = errors.first_cuts(chosen, flips)
                        ties = flips & ~np.isin(np.arange(n), [c.sample for c in cuts if not c.near_tie])
                    reference = np.where(ties[:, None], replayed, ref)
            results.append(compare(reference, out.astype(np.float32), g.file, g.precision, bs, flips, ties, cuts,
                                   ran=TWIN if by_twin else ""))
    return results


class TorchAnswers:
    """PyTorch's outputs and token choices (`_scored`) on a set of inputs, each set run once however many checks
    ask (`inputs.once_per_input`): a build's stored references and its parity check hold the model to the same
    held-out images."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self._scored = once_per_input(lambda x: _scored(model, x))

    def __call__(self, x: torch.Tensor):
        return self._scored(x)


def _scored(model: torch.nn.Module, x: torch.Tensor, replay: Optional[list[np.ndarray]] = None):
    """(PyTorch's outputs, its token choices as `margins.Decision`s) on every sample of `x`."""
    calls: list = []
    outputs = _outputs(torch_runner(model, replay, calls), x, TORCH_BATCH)
    return outputs, margins.join(calls, x.shape[0])


def _rounding(model: torch.nn.Module, x: torch.Tensor, kept: list[np.ndarray], decisions,
              half_model: Optional[torch.nn.Module] = None) -> margins.Rounding:
    """PyTorch fp32's choices with the fp16 error of their scores: its half model (`half_model`, default: made here)
    replays fp32's choices (`kept`), so both score the same tokens."""
    with fp32_products():  # PyTorch half's arithmetic at fp32 speed
        _, half = _scored(copy.deepcopy(model).half() if half_model is None else half_model, x.half(), kept)
    return margins.Rounding.measure(decisions, half, estimated=True)


def _measured(replayed: list[margins.Decision], scores: list[np.ndarray]) -> margins.Rounding:
    """The fp16 error of a graph's choices, from the scores its debug run outputs after the kept indices,
    against PyTorch fp32 replaying the graph's choices, so both score the same tokens in the same layout."""
    own = [margins.Decision(d.reduction, d.what, s, d.chosen) for d, s in zip(replayed, scores)]
    return margins.Rounding.measure(replayed, own)


def _outputs(runner: Runner, x: torch.Tensor, batch: int) -> list[np.ndarray]:
    """Every output of `runner` for every sample of `x`, run `batch` samples at a time (the last chunk
    padded to a full batch, for graphs with a fixed batch; the padding's outputs are dropped)."""
    return _concat([runner(c.numpy()) for c in batches(x, batch)], x.shape[0])


def _concat(chunks: list, n: Optional[int] = None) -> list[np.ndarray]:
    """Per output, the chunks' results joined along the batch (the first `n` samples)."""
    return [np.concatenate([np.asarray(c[i]) for c in chunks])[:n] for i in range(len(chunks[0]))]


def _flipped(n: int, torch_idx: list[np.ndarray], ort_idx: list[np.ndarray]) -> np.ndarray:
    """Per sample: does any reduction keep a different set of tokens? (order inside a set is free)"""
    flips = np.zeros(n, dtype=bool)
    for a, b in zip(torch_idx, ort_idx):
        a = np.sort(a.reshape(a.shape[0], -1), axis=1)
        b = np.sort(b.reshape(b.shape[0], -1), axis=1)
        flips |= (a != b).any(axis=1)
    return flips
