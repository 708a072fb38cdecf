# SPDX-License-Identifier: Apache-2.0
"""Runners: one call shape for every runtime a graph is checked or timed in.

A runner is called with a batch of images (numpy, fp32) and returns every output of the model as
numpy arrays: the logits first, then, for a token-reduction model's debug graph, the indices each
reduction kept. `onnx_runner` opens a graph in onnxruntime (its plugin nodes, if any, running the
token ops' reference: `op_reference`); `torch_runner` runs the PyTorch model itself; `engine_runner`
runs a bundle's TensorRT or TensorRT-RTX engine on the GPU present (`tensorrt`). Runtimes are
imported lazily, so a machine without one can still use the others.
"""
from __future__ import annotations

from pathlib import Path
from typing import ContextManager, Optional, Sequence

import numpy as np
import onnx
import torch

from . import tensorrt
from .runner import Runner


def onnx_runner(path: Path | str, threads: Optional[int] = None, scores: bool = False) -> Runner:
    """onnxruntime on the graph at `path`; a plugin graph's plugin nodes run the reference ops. With `scores`,
    a plugin graph's outputs are followed by every token choice's scores, as a standard-op fp16 debug graph
    outputs them (`op_reference.scores`)."""
    from . import op_reference, ort  # onnxruntime: seconds to load, and torch_runner's callers need it not

    plugins = op_reference.has_plugins(onnx.load(str(path), load_external_data=False))
    # a check, not a benchmark: its workers sleep between kernels, leaving the cores to the build's other processes
    session = (op_reference.session if plugins else ort.session)(path, options=ort.session_options(threads, spinning=False))
    if not (plugins and scores):
        return lambda x: ort.run(session, x)

    def run(x: np.ndarray) -> list[np.ndarray]:
        with op_reference.scores() as made:
            outputs = ort.run(session, x)
        return [*outputs, *made]

    return run


def torch_runner(model, replay: Optional[Sequence[np.ndarray]] = None, decisions: Optional[list] = None) -> Runner:
    """The PyTorch model's `forward_traced` (logits, then kept indices); with `replay`, indices per
    reduction for the whole sample set, handed out to the calls in order (wrapping around, as
    `checks.inputs.batches` pads the last batch). A `decisions` list receives, per call, the list of
    every token choice as (reduction, what, scores, chosen) in numpy (see `methods.base.Choices`)."""
    done = 0

    def run(x: np.ndarray) -> list[np.ndarray]:
        nonlocal done
        rows = (done + np.arange(x.shape[0])) % (len(replay[0]) if replay else 1)
        done += x.shape[0]
        chosen = None if replay is None else [torch.from_numpy(r[rows]) for r in replay]
        made = None if decisions is None else []
        with torch.no_grad():
            outputs = [o.numpy() for o in model.forward_traced(torch.from_numpy(x), chosen, made)]
        if made is not None:
            decisions.append([(r, what, s.float().numpy(), c.numpy()) for r, what, s, c in made])
        return outputs

    return run


def engine_runner(bundle: Path, folder: str, entry: dict) -> ContextManager[Runner]:
    """The engine `entry` of `bundle`/engines/`folder` (a context manager: it holds the engine and its
    device buffers while open). Only after `engine.preflight.check` passed."""
    return tensorrt.runner(bundle, folder, entry)


__all__ = ["Runner", "engine_runner", "onnx_runner", "torch_runner"]
