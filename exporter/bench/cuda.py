# SPDX-License-Identifier: Apache-2.0
"""Timing on a CUDA GPU: a host timer sees the GPU's work only after a synchronisation, and CUDA graphs
replay a model without Python's per-kernel launch cost (what an engine avoids too)."""
from __future__ import annotations

from typing import Callable

import torch


def graphed(fn: Callable, x: torch.Tensor) -> Callable[[], None]:
    """`fn(x)` captured as a CUDA graph (after warm-up on a side stream, as torch.cuda.graphs requires);
    returns its replay."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn(x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn(x)
    return graph.replay


def synced(fn: Callable[[], object]) -> Callable[[], None]:
    """`fn` followed by a device synchronisation, so a host timer measures the GPU's work."""

    def call():
        fn()
        torch.cuda.synchronize()

    return call


def timed(replay, iterations: int) -> float:
    """Microseconds per replay over `iterations` back-to-back replays (CUDA events)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iterations):
        replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1000 / iterations
