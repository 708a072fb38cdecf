"""Run PyTorch and onnxruntime on the same held-out inputs and compare every graph of a bundle.

For token-reduction models the kept-token indices are compared too: each graph is exported once
more with the chosen indices as extra outputs (`Traced`, in a temp dir, never in the bundle), so a
sample whose logits moved because a near-tie flipped a token is told apart from a broken graph.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..export.fp16 import export_fp16
from ..export.onnx_export import export_onnx
from ..methods.base import ReducedViT, Traced
from ..runtime import ort as ort_runtime
from ..spec import BatchRange
from .inputs import batches, held_out
from .parity import Comparison, compare


@dataclass
class Graph:
    file: str  # name inside the bundle
    precision: str
    io_fp16: bool = False


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
    opset: int,
    threads: Optional[int] = None,
) -> list[Comparison]:
    x, _ = held_out(model, img_size)
    n = x.shape[0]
    reduced = isinstance(model, ReducedViT)
    # PyTorch once per sample (its result does not depend on the batch it runs in, beyond rounding).
    with torch.no_grad():
        outs = [Traced(model)(chunk) if reduced else (model(chunk),) for chunk in x.split(8)]
    ref = torch.cat([o[0] for o in outs]).numpy()
    ref_idx = [torch.cat([o[i] for o in outs]).numpy() for i in range(1, len(outs[0]))]
    results = []
    with tempfile.TemporaryDirectory(prefix="exporter-verify-") as tmp:
        for g in graphs:
            session = ort_runtime.session(bundle / g.file, threads)
            traced = _traced_session(model, g, Path(tmp), batch, img_size, opset, threads) if reduced else None
            for bs in verify_batches(batch):
                chunks = batches(x, bs)
                out = np.concatenate([ort_runtime.run(session, c.numpy())[0] for c in chunks])[:n]
                flips = None
                if traced is not None:
                    runs = [ort_runtime.run(traced, c.numpy())[1:] for c in chunks]
                    ort_idx = [np.concatenate([r[i] for r in runs])[:n] for i in range(len(ref_idx))]
                    flips = _flipped(n, ref_idx, ort_idx)
                results.append(compare(ref, out.astype(np.float32), g.file, g.precision, bs, flips))
    return results


def _traced_session(model, g: Graph, tmp: Path, batch: BatchRange, img_size, opset, threads):
    """The same graph with kept indices as extra outputs, exported like the bundle's graph."""
    traced = Traced(model)
    with torch.no_grad():
        count = len(traced(torch.zeros(1, 3, *img_size))) - 1
    names = ["logits"] + [f"kept{i}" for i in range(count)]
    path = tmp / f"traced.{g.file}"
    kwargs = dict(img_size=img_size, batch=batch.as_tuple(), opset=opset, output_names=names)
    if g.precision == "fp16":
        export_fp16(traced, path, io_fp16=g.io_fp16, **kwargs)
    else:
        export_onnx(traced, path, **kwargs)
    return ort_runtime.session(path, threads)


def _flipped(n: int, torch_idx: list[np.ndarray], ort_idx: list[np.ndarray]) -> np.ndarray:
    """Per sample: does any reduction keep a different set of tokens? (order inside a set is free)"""
    flips = np.zeros(n, dtype=bool)
    for a, b in zip(torch_idx, ort_idx):
        a = np.sort(a.reshape(a.shape[0], -1), axis=1)
        b = np.sort(b.reshape(b.shape[0], -1), axis=1)
        flips |= (a != b).any(axis=1)
    return flips
