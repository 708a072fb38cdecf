"""Side-by-side throughput: every method against the dense model, onnxruntime against PyTorch.

All candidates run in one process with the same thread settings, interleaved round by round (so
a slow minute of the machine hits every method alike); each ratio comes from medians of the same
rounds. The reduction machinery's share (scores, top-k, gathers, merging) is measured with
onnxruntime's per-node profiler on an unfused session, attributing nodes through the module path
the exporter records (`namespace`): method code runs outside timm's submodules, so a node at the
top level whose aten op is not the attention itself, a reshape or a residual add/concat is
machinery (see `machinery_nodes`).
"""
from __future__ import annotations

import json
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import onnx
import torch

from ..export.onnx_export import export_onnx
from ..methods import apply_method, get_method
from ..methods.base import ReducedViT
from ..methods.flops import count_gmacs
from ..runtime import ort as ort_runtime

# Top-level aten ops that are the model's own attention and reshapes, not token selection.
PLUMBING_OPS = ("scaled_dot_product_attention", "unbind", "view", "permute", "transpose")
# Top-level adds and concats are residuals when an input comes out of a timm submodule (a block's
# attention or MLP); otherwise they belong to the method (a merge adding its sources, EViT's concat).
RESIDUAL_OPS = ("add", "cat")


@dataclass
class Candidate:
    label: str
    method: str
    params: dict
    model: torch.nn.Module
    gmacs: float
    schedule: Optional[list[int]]
    onnx_path: Optional[Path] = None
    ort_ms: list[float] = field(default_factory=list)
    torch_ms: list[float] = field(default_factory=list)
    machinery_share: Optional[float] = None


def machinery_nodes(model: onnx.ModelProto) -> set[str]:
    """Names of nodes emitted by token-selection code: not inside any timm submodule (the exporter's
    `namespace` is just root/op), not attention or reshape plumbing, and not a residual add/concat.
    An upper bound: the class-token concat and position-embedding add count too (once per model)."""

    def segments(node: onnx.NodeProto) -> list[str]:
        return next((p.value for p in node.metadata_props if p.key == "namespace"), "").split("/")

    in_submodule = {out for node in model.graph.node if len(segments(node)) > 2 for out in node.output}
    names = set()
    for node in model.graph.node:
        path = segments(node)
        if len(path) != 2:
            continue
        op = path[-1].split(":")[0].strip().rstrip("_0123456789")
        if op.startswith(PLUMBING_OPS):
            continue
        if op in RESIDUAL_OPS and any(i in in_submodule for i in node.input):
            continue
        names.add(node.name)
    return names


def profile_machinery(path: Path, x: np.ndarray, threads: int, sessions: int = 3, runs: int = 10) -> float:
    """Fraction of node time spent in machinery nodes, from onnxruntime's profiler (no fusions,
    so node names survive). Each node counts with its median time over `runs` runs after a
    warm-up run; the share is the median over `sessions` fresh sessions, since one session's
    placement in memory can shift it by half a percentage point on a small machine."""
    machinery = machinery_nodes(onnx.load(str(path), load_external_data=False))
    shares = []
    for _ in range(sessions):
        medians = _node_medians(path, x, threads, runs)
        total = sum(medians.values())
        shares.append(sum(t for name, t in medians.items() if name in machinery) / total if total else 0.0)
    return statistics.median(shares)


def _node_medians(path: Path, x: np.ndarray, threads: int, runs: int) -> dict[str, float]:
    """Median kernel time per node name over `runs` profiled runs of an unoptimised session."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for _ in range(runs + 1):
            ort_runtime.run(session, x)
        events = json.loads(Path(session.end_profiling()).read_text())
    warm = sorted(e["ts"] for e in events if e.get("name") == "model_run")[1]
    times: dict[str, list[float]] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= warm:
            times.setdefault(e["name"][: -len("_kernel_time")], []).append(e["dur"])
    return {name: statistics.median(durations) for name, durations in times.items()}


def candidates(dense: torch.nn.Module, methods: list[str], img_size: tuple[int, int]) -> list[Candidate]:
    out = []
    for name in methods:
        params = get_method(name).resolve({})
        model = apply_method(dense, name, **params)
        schedule = model.schedule if isinstance(model, ReducedViT) else None
        shown = model.params if isinstance(model, ReducedViT) else params  # as resolved by the method
        label = name + "".join(f" {k}={_short(v)}" for k, v in shown.items() if v is not None)
        out.append(Candidate(label, name, params, model, count_gmacs(model, img_size), schedule))
    return out


def _short(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, (tuple, list)) and len(value) <= 4 else (
        "per-block" if isinstance(value, (tuple, list)) else str(value))


def run(
    dense: torch.nn.Module,
    methods: list[str],
    img_size: tuple[int, int],
    batch: int,
    threads: int,
    rounds: int,
    iterations: int,
    opset: int = 18,
    log: Callable[[str], None] = print,
) -> list[Candidate]:
    torch.set_num_threads(threads)
    cands = candidates(dense, methods, img_size)
    x = torch.randn(batch, 3, *img_size, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory(prefix="exporter-bench-") as tmp:
        sessions = {}
        for c in cands:
            log(f"exporting {c.label}")
            c.onnx_path = export_onnx(c.model, Path(tmp) / f"{c.method}.onnx", img_size, (batch, batch, batch), opset)
            sessions[c.method] = ort_runtime.session(c.onnx_path, threads)
            ort_runtime.run(sessions[c.method], x.numpy())  # warm-up
            with torch.no_grad():
                c.model(x)
        for r in range(rounds):
            log(f"round {r + 1}/{rounds}")
            for c in cands:
                c.ort_ms.append(_time(lambda: ort_runtime.run(sessions[c.method], x.numpy()), iterations))
                with torch.no_grad():
                    c.torch_ms.append(_time(lambda: c.model(x), iterations))
        for c in cands:
            if c.schedule is not None:
                log(f"profiling {c.label}")
                c.machinery_share = profile_machinery(c.onnx_path, x.numpy(), threads)
    return cands


def _time(fn, iterations: int) -> float:
    """Mean milliseconds per call over `iterations` back-to-back calls."""
    start = time.perf_counter()
    for _ in range(iterations):
        fn()
    return (time.perf_counter() - start) * 1000 / iterations


def table(cands: list[Candidate], batch: int) -> str:
    """Markdown: per method, FLOPs ratio next to the measured speedups. Times are medians over rounds;
    each ratio is the median of its per-round ratios, so a drift of the machine's speed between rounds
    (which hits both sides of a round alike) cancels."""
    dense = next(c for c in cands if c.method == "none")
    lines = [
        "| method | GMACs | FLOPs ratio | ORT ms/batch | ORT img/s | measured speedup | speedup / FLOPs ratio | machinery share | PyTorch ms/batch | ORT vs PyTorch |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cands:
        ort_ms, torch_ms = statistics.median(c.ort_ms), statistics.median(c.torch_ms)
        flops_ratio = dense.gmacs / c.gmacs
        speedup = _ratio(dense.ort_ms, c.ort_ms)
        share = "—" if c.machinery_share is None else f"{c.machinery_share:.1%}"
        lines.append(
            f"| {c.label} | {c.gmacs:.2f} | {flops_ratio:.2f}x | {ort_ms:.1f} | {batch * 1000 / ort_ms:.1f} | "
            f"{speedup:.2f}x | {speedup / flops_ratio:.2f} | {share} | {torch_ms:.1f} | {_ratio(c.torch_ms, c.ort_ms):.2f}x |"
        )
    return "\n".join(lines)


def _ratio(slower: list[float], faster: list[float]) -> float:
    """Median over rounds of slower[r] / faster[r]."""
    return statistics.median(a / b for a, b in zip(slower, faster))
