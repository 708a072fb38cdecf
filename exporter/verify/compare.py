"""Run PyTorch and onnxruntime on the same held-out inputs and compare every graph of a bundle.

For token-reduction models the kept-token indices are compared too, through each graph's debug
twin (the same export with the chosen indices as extra outputs, see export.graphs), so a sample
whose logits moved because a near-tie flipped a token is told apart from a broken graph: such a
sample is compared with PyTorch replaying onnxruntime's choices (see verify.parity).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..export.graphs import Graph
from ..methods.base import ReducedViT, Traced
from ..runtime import ort as ort_runtime
from ..spec import BatchRange
from .inputs import batches, held_out
from .parity import Comparison, compare


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
) -> list[Comparison]:
    x, _ = held_out(model, img_size)
    n = x.shape[0]
    ref, *ref_idx = _torch_outputs(model, x)
    sensitive = None
    if isinstance(model, ReducedViT) and any(g.precision == "fp16" for g in graphs):
        # samples on which PyTorch's own half-precision model keeps other tokens than in fp32
        _, *half_idx = _torch_outputs(copy.deepcopy(model).half(), x.half())
        sensitive = _flipped(n, ref_idx, half_idx)
    results = []
    for g in graphs:
        session = ort_runtime.session(bundle / g.file, threads)
        debug = ort_runtime.session(g.debug, threads) if g.debug else None
        for bs in verify_batches(batch):
            chunks = batches(x, bs)
            (out,) = _concat([ort_runtime.run(session, c.numpy()) for c in chunks], n)
            flips = ties = None
            reference = ref
            if debug is not None:
                ort_idx = _concat([ort_runtime.run(debug, c.numpy())[1:] for c in chunks], n)
                flips = _flipped(n, ref_idx, ort_idx)
                ties = flips & sensitive if g.precision == "fp16" else flips
                if ties.any():  # PyTorch with onnxruntime's choices: what the graph should have computed
                    replayed, *_ = _torch_outputs(model, x, replay=ort_idx)
                    reference = np.where(ties[:, None], replayed, ref)
            results.append(compare(reference, out.astype(np.float32), g.file, g.precision, bs, flips, ties))
    return results


def _torch_outputs(model: torch.nn.Module, x: torch.Tensor, replay: Optional[list[np.ndarray]] = None) -> list[np.ndarray]:
    """Logits (then, for reduced models, the kept indices per reduction) of every sample; with
    `replay` (indices per reduction, as traced), the reductions use those instead of choosing.

    PyTorch runs once per sample set: its result does not depend on the batch, beyond rounding."""
    outputs = []
    with torch.no_grad():
        for start in range(0, x.shape[0], 8):
            chunk = x[start : start + 8]
            if not isinstance(model, ReducedViT):
                outputs.append((model(chunk),))
                continue
            chosen = None if replay is None else [torch.from_numpy(r[start : start + 8]) for r in replay]
            outputs.append(Traced(model)(chunk, chosen))
    return _concat(outputs)


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
