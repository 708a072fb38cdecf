# SPDX-License-Identifier: Apache-2.0
"""`bench --models`: every method (and model) exported here and timed against the first dense model, onnxruntime
against PyTorch, on the CPU.

Each runtime runs in a process of its own and the candidates take turns round by round (`timing`); each
ratio comes from medians of the same rounds. The first row is timed once more alone in a fresh process
per runtime (`lone_note`), which checks the absolute numbers, and the reduced models' graphs are
profiled for the share of the reduction machinery and size bias (`profile`).
"""
from __future__ import annotations

import ast
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from ..errors import ExporterError
from ..export.onnx_export import export_onnx
from ..methods import apply_method, get_method, list_methods
from ..methods.flops import count_gmacs
from .profile import OVERHEADS, Profile, profile_overheads
from .timing import Runtime, alone_note, fmt_ms, interleaved, ratios


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
    profile: Optional["Profile"] = None  # where onnxruntime's node time goes (reduced models only)
    ort_alone_ms: list[float] = field(default_factory=list)  # the first row only: timed alone (`lone_note`)
    torch_alone_ms: list[float] = field(default_factory=list)


def parse_models(text: str) -> dict[str, tuple[str, dict]]:
    """`--models a,b(arg=value, ...)` as label -> (timm name, constructor arguments); values are Python
    literals, e.g. `litv2_small(local_ws=(0, 0, 1, 1))`."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text + ","):
        depth += (ch in "([") - (ch in ")]")
        if ch == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    out = {}
    for part in filter(None, parts):
        try:
            call = ast.parse(part, mode="eval").body
            if isinstance(call, ast.Name):
                out[part] = (call.id, {})
                continue
            if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and not call.args):
                raise ValueError
            out[part] = (call.func.id, {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords})
        except (SyntaxError, ValueError) as e:
            raise ExporterError(
                f"--models entry '{part}' is neither a model name nor name(arg=value, ...).",
                "Write e.g. --models deit_small_patch16_224,litv2_small(alpha=0.0).",
            ) from e
    return out


def selected_methods(text: Optional[str]) -> list[str]:
    """`--methods a,b` as the methods to run, dense first (all when None); an unknown name fails here."""
    methods = list_methods() if text is None else ["none"] + [m for m in text.split(",") if m != "none"]
    for name in methods:
        get_method(name)
    return methods


def candidates(
    dense: torch.nn.Module,
    methods: list[str],
    img_size: tuple[int, int],
    prefix: str = "",
    log: Optional[Callable[[str], None]] = None,
) -> list[Candidate]:
    """Every method at its defaults on `dense`, labelled `prefix` + method and parameters. With `log`, a
    method that does not apply to the model is skipped with a line; without, its ExporterError is raised."""
    out = []
    for name in methods:
        params = get_method(name).resolve({})
        try:
            model = apply_method(dense, name, **params)
        except ExporterError as e:
            if log is None:
                raise
            log(f"skipping {prefix}{name}: {e.problem}")
            continue
        label = prefix + method_label(name, model.params)  # the parameters as resolved by the method
        out.append(Candidate(label, name, params, model, count_gmacs(model, img_size), model.schedule))
    return out


def method_label(method: str, params: dict) -> str:
    """A method and its parameters for a table, e.g. 'tome r=13 every block prop_attn=True'."""
    return method + "".join(f" {k}={_short(v)}" for k, v in params.items() if v is not None)


def _short(value) -> str:
    """A parameter for a table label: short lists in full, a constant per-block list as its value."""
    if not isinstance(value, (tuple, list)):
        return str(value)
    if len(value) <= 4:
        return ",".join(map(str, value))
    return f"{value[0]} every block" if len(set(value)) == 1 else "per-block"


def run(
    models: dict[str, torch.nn.Module],
    methods: list[str],
    img_size: tuple[int, int],
    batch: int,
    threads: int,
    rounds: int,
    iterations: int,
    opset: int = 18,
    log: Callable[[str], None] = print,
) -> list[Candidate]:
    """Time every method on every model (label -> dense model; all take `img_size`) in onnxruntime and
    PyTorch, each runtime in its own process (`Runtime`), then profile the reduced models' graphs.
    The caller's torch settings (threads included) are left as they were."""
    cands = []
    for name, dense in models.items():
        several = len(models) > 1  # then rows are labelled by model, and a method a model cannot take is skipped
        cands += candidates(dense, methods, img_size, f"{name} " if several else "", log if several else None)
    x = torch.randn(batch, 3, *img_size, generator=torch.Generator().manual_seed(0)).numpy()
    with tempfile.TemporaryDirectory(prefix="exporter-bench-") as tmp:
        for i, c in enumerate(cands):
            log(f"exporting {c.label}")
            path = Path(tmp) / f"{i}-{c.method}.onnx"
            c.onnx_path = export_onnx(c.model, path, img_size, (batch, batch, batch), opset)
        log("starting one process per runtime")
        with Runtime("ort", {i: c.onnx_path for i, c in enumerate(cands)}, x, threads) as ort_rt, \
                Runtime("torch", {i: c.model for i, c in enumerate(cands)}, x, threads) as torch_rt:
            timers = {}
            for i in range(len(cands)):
                timers[("ort", i)] = lambda n, i=i: ort_rt.time(i, n)
                timers[("torch", i)] = lambda n, i=i: torch_rt.time(i, n)
            times = interleaved(timers, rounds, iterations, log)
        for i, c in enumerate(cands):
            c.ort_ms, c.torch_ms = times[("ort", i)], times[("torch", i)]
        first = cands[0]
        log(f"timing {first.label} alone")
        for kind, model in (("ort", first.onnx_path), ("torch", first.model)):
            with Runtime(kind, {0: model}, x, threads) as alone:
                alone_ms = interleaved({0: lambda n: alone.time(0, n)}, rounds, iterations, lambda _: None)[0]
            setattr(first, f"{kind}_alone_ms", alone_ms)
        for c in cands:
            if c.schedule is not None:
                log(f"profiling {c.label}")
                c.profile = profile_overheads(c.onnx_path, x, threads)
    return cands


def table(cands: list[Candidate], batch: int) -> str:
    """Markdown: per candidate, FLOPs ratio next to the measured speedups, both against the first row. Times
    are medians over rounds; each ratio is the median of its per-round ratios, so a drift of the machine's
    speed between rounds (which hits both sides of a round alike) cancels. The speedup's range over rounds
    is shown beside it: how far one round can be trusted. The main runtime is onnxruntime when it was
    timed (then PyTorch is compared with it), else PyTorch; share columns appear when a row was profiled."""
    ref = cands[0]
    main, runtime = ("ort_ms", "ORT") if ref.ort_ms else ("torch_ms", "PyTorch")
    both = bool(ref.ort_ms and ref.torch_ms)
    profiled = any(c.profile for c in cands)
    head = ["method", "GMACs", "FLOPs ratio", f"{runtime} ms/batch", f"{runtime} img/s", "measured speedup",
            "speedup / FLOPs ratio"]
    head += ["machinery share", "size-bias share"] if profiled else []
    head += ["PyTorch ms/batch", "ORT vs PyTorch"] if both else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in cands:
        ms = statistics.median(getattr(c, main))
        flops_ratio = ref.gmacs / c.gmacs
        per_round = ratios(getattr(ref, main), getattr(c, main))
        speedup = statistics.median(per_round)
        row = [c.label, f"{c.gmacs:.2f}", f"{flops_ratio:.2f}x", fmt_ms(ms), f"{batch * 1000 / ms:.1f}",
               f"{speedup:.2f}x ({min(per_round):.2f}–{max(per_round):.2f})", f"{speedup / flops_ratio:.2f}"]
        if profiled:
            measured = c.profile.shares if c.profile else {}
            row += [f"{measured[k]:.1%}" if measured.get(k) else "—" for k in OVERHEADS]
        if both:
            row += [fmt_ms(statistics.median(c.torch_ms)), f"{statistics.median(ratios(c.torch_ms, c.ort_ms)):.2f}x"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def lone_note(cands: list[Candidate]) -> str:
    """The first row's medians when it ran alone, in a fresh process per runtime, next to its medians in
    the interleaved rounds: the check that taking turns did not change the absolute numbers."""
    first = cands[0]
    runtimes = [("onnxruntime", first.ort_alone_ms, first.ort_ms), ("PyTorch", first.torch_alone_ms, first.torch_ms)]
    return alone_note(first.label, runtimes)


def profile_note(cands: list[Candidate]) -> str:
    """How far the shares can be trusted: the profiler cost they exclude, and how the node time left
    compares with the timed (unprofiled) runs; near 100% means the profile accounts for the run."""
    profiled = [c for c in cands if c.profile]
    if not profiled:
        return ""
    costs = [c.profile.profiler_us for c in profiled]
    covered = [c.profile.node_ms / statistics.median(c.ort_ms) for c in profiled]
    return (
        f"Shares exclude the {min(costs):.1f}–{max(costs):.1f} µs that onnxruntime's profiler adds to every node's "
        f"recorded time (calibrated per session); the node time left is {min(covered):.0%}–{max(covered):.0%} "
        "of the timed run."
    )
