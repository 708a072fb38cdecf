"""Run PyTorch and onnxruntime on the same held-out inputs and compare every graph of a bundle.

For token-reduction models the kept-token indices are compared too, through each graph's debug
twin (the same export with the chosen indices as extra outputs, see export.graphs), so a sample
whose logits moved because a near-tie flipped a token is told apart from a broken graph.
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
    """Two batch sizes when the graph allows it: the optimum and another one from the range."""
    if not batch.dynamic:
        return [batch.min]
    other = batch.min if batch.min != batch.opt else batch.max
    return sorted({batch.opt, other})


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
    # PyTorch once per sample (its result does not depend on the batch it runs in, beyond rounding).
    with torch.no_grad():
        outs = [Traced(model)(c) if isinstance(model, ReducedViT) else (model(c),) for c in x.split(8)]
    ref = torch.cat([o[0] for o in outs]).numpy()
    ref_idx = [torch.cat([o[i] for o in outs]).numpy() for i in range(1, len(outs[0]))]
    sensitive = None
    if isinstance(model, ReducedViT) and any(g.precision == "fp16" for g in graphs):
        sensitive = _fp16_sensitive(model, x, ref_idx)
    results = []
    for g in graphs:
        session = ort_runtime.session(bundle / g.file, threads)
        debug = ort_runtime.session(g.debug, threads) if g.debug else None
        for bs in verify_batches(batch):
            chunks = batches(x, bs)
            out = np.concatenate([ort_runtime.run(session, c.numpy())[0] for c in chunks])[:n]
            flips = None
            if debug is not None:
                runs = [ort_runtime.run(debug, c.numpy())[1:] for c in chunks]
                ort_idx = [np.concatenate([r[i] for r in runs])[:n] for i in range(len(ref_idx))]
                flips = _flipped(n, ref_idx, ort_idx)
            excused = sensitive if g.precision == "fp16" else None
            results.append(compare(ref, out.astype(np.float32), g.file, g.precision, bs, flips, excused))
    return results


def _fp16_sensitive(model: ReducedViT, x: torch.Tensor, ref_idx: list[np.ndarray]) -> np.ndarray:
    """Samples on which PyTorch's own half-precision model keeps other tokens than in fp32."""
    half = copy.deepcopy(model).half()
    with torch.no_grad():
        outs = [Traced(half)(c.half()) for c in x.split(8)]
    idx = [torch.cat([o[i] for o in outs]).numpy() for i in range(1, len(outs[0]))]
    return _flipped(x.shape[0], ref_idx, idx)


def _flipped(n: int, torch_idx: list[np.ndarray], ort_idx: list[np.ndarray]) -> np.ndarray:
    """Per sample: does any reduction keep a different set of tokens? (order inside a set is free)"""
    flips = np.zeros(n, dtype=bool)
    for a, b in zip(torch_idx, ort_idx):
        a = np.sort(a.reshape(a.shape[0], -1), axis=1)
        b = np.sort(b.reshape(b.shape[0], -1), axis=1)
        flips |= (a != b).any(axis=1)
    return flips
