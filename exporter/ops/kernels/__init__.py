# SPDX-License-Identifier: Apache-2.0
"""The token ops' fused kernels, one Python function per op with the custom op's signature and results:
each launches the op's decision kernel, then its movement kernel, sharing a plan in scratch tensors it
allocates (`_triton.py` says why; `config.py` lists the kernels).

CUDA tensors run the Triton kernels (`_triton.py`, JIT-compiled); CPU tensors run the same kernels in
Triton's interpreter, so they are tested on machines without a GPU. Triton fixes its mode per process:
triton.language's own functions (tl.zeros, tl.sum, ...) become interpreted or compiled when triton is
first imported, as TRITON_INTERPRET says then. So the first kernel call imports triton in the mode it
needs (interpreter for CPU tensors or TRITON_INTERPRET=1, else JIT), and a CPU call in a process whose
triton is already compiled-mode raises (run it in a fresh process: tests/kernel_checks.KernelWorker).
The kernels used in interpreter mode are a second copy of `_triton.py` decorated with TRITON_INTERPRET=1,
so the mode does not depend on who imported `_triton` first. Importing this package imports no triton.
"""
from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path

import torch

from .config import KERNELS, MOVE_C, MOVE_ROWS, constexprs, is_aligned, launch_options, plan_floats, plan_ints
from .hilo_attention import hilo_attention
from .mode import interpreting as _interpreting, triton_mode

_modules: dict[str, object] = {}
_lock = threading.RLock()


def _kernels(device: torch.device):
    """(kernel module, interpreted) for a call on `device`."""
    with _lock:
        mode = triton_mode()
        if mode is None:
            mode = "jit" if device.type == "cuda" and os.environ.get("TRITON_INTERPRET", "0") in ("", "0") else "interpreter"
        if mode == "jit" and device.type != "cuda":
            raise RuntimeError("CPU tensors run the kernels in Triton's interpreter, but triton was imported in "
                               "compiled mode in this process: set TRITON_INTERPRET=1 before triton is imported, "
                               "or call the kernels in a fresh process")
        if mode not in _modules:
            _modules[mode] = _load(interpret=mode == "interpreter")
        return _modules[mode], mode == "interpreter"


def _load(interpret: bool):
    if not interpret:
        with _interpreting(None):  # compiled-mode triton: the kernels must be JITFunctions too
            from . import _triton

        return _triton
    spec = importlib.util.spec_from_file_location(f"{__name__}._triton_interpreted", Path(__file__).with_name("_triton.py"))
    module = importlib.util.module_from_spec(spec)
    with _interpreting():
        import triton.experimental.gluon  # noqa: F401  (else imported by the interpreter while tl is patched)

        spec.loader.exec_module(module)
    return module


def _launch(kernel: str, device: torch.device, grid: tuple, *args) -> None:
    module, interpreted = _kernels(device)
    fn = getattr(module, KERNELS[kernel].name)
    if interpreted:
        with _lock, _interpreting():
            fn[grid](*args, **constexprs(kernel))
    else:
        with torch.cuda.device(device):
            aligned = is_aligned(kernel, dict(zip(KERNELS[kernel].params, args)))
            fn[grid](*args, **constexprs(kernel), **launch_options(kernel, aligned))


def _plan(B: int, N: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A decision's scratch and plan for the movement (`_triton.py`): int32 and fp32 words per image."""
    return (torch.empty(B, plan_ints(N), dtype=torch.int32, device=device),
            torch.empty(B, plan_floats(N), dtype=torch.float32, device=device))


def _combine(x: torch.Tensor, plan: tuple, rows: int, norm: bool) -> torch.Tensor:
    """The movement: [B, rows, C] from x by the plan's terms (`combine_kernel`)."""
    B, N, C = x.shape
    out = x.new_empty(B, rows, C)
    grid = (B, -(-rows // MOVE_ROWS), -(-C // MOVE_C))
    if B and rows:
        _launch("combine_kernel", x.device, grid, x, *plan, out, N, C, rows, int(norm))
    return out


def _tokens(x: torch.Tensor) -> torch.Tensor:
    if x.dim() != 3 or x.dtype not in (torch.float32, torch.float16):
        raise ValueError(f"tokens must be [B, N, C] float32 or float16, got {tuple(x.shape)} {x.dtype}")
    return x.contiguous()


def _fp32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float32).contiguous()


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(what)


def _select(x: torch.Tensor, score: torch.Tensor, k: int, extra: bool, norm: bool):
    """The k best patches by score (idx [B, k], best first) and [class, kept patches, (extra) the dropped
    ones' score-weighted sum, divided by their weights' sum with `norm`]."""
    B, N, _ = x.shape
    idx = torch.empty(B, k, dtype=torch.int64, device=x.device)
    plan = _plan(B, N, x.device)
    if B:
        grid = (B, -(-(N + 1) // constexprs("select_decide_kernel")["BLOCK_I"]))
        _launch("select_decide_kernel", x.device, grid, score, idx, *plan, N, k, int(extra))
    return _combine(x, plan, 1 + k + int(extra), norm), idx


def topk_prune(x: torch.Tensor, score: torch.Tensor, k: int, fuse: bool):
    """(tokens [B, 1 + k + fuse, C], idx [B, k]) as `reference.topk_prune`."""
    x, score = _tokens(x), _fp32(score)
    B, N, C = x.shape
    _check(score.shape == (B, N - 1) and 1 <= k < N - 1, f"topk_prune: score {tuple(score.shape)}, k={k} for N={N}")
    return _select(x, score, k, bool(fuse), norm=False)


def evovit_select(x: torch.Tensor, g: torch.Tensor, keep: int):
    """(tokens [B, keep + 2, C], idx [B, keep]) as `reference.evovit_select`."""
    x, g = _tokens(x), _fp32(g)
    B, N, C = x.shape
    _check(g.shape == (B, N - 1) and 1 <= keep < N - 1, f"evovit_select: g {tuple(g.shape)}, keep={keep} for N={N}")
    return _select(x, g, keep, True, norm=True)


def evovit_restore(x: torch.Tensor, tokens: torch.Tensor, moved: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """out [B, N, C] as `reference.evovit_restore` (idx must hold distinct patch positions)."""
    x = _tokens(x)
    B, N, C = x.shape
    K = idx.shape[-1]
    tokens, moved = tokens.to(x.dtype).contiguous(), moved.to(x.dtype).contiguous()
    idx = idx.to(torch.int64).contiguous()
    _check(tokens.shape == (B, K + 2, C) and moved.shape == (B, 1, C) and idx.shape == (B, K),
           f"evovit_restore: tokens {tuple(tokens.shape)}, moved {tuple(moved.shape)}, idx {tuple(idx.shape)} for x {tuple(x.shape)}")
    out = torch.empty_like(x)
    plan = _plan(B, N, x.device)
    if B:
        _launch("restore_decide_kernel", x.device, (B,), idx, *plan, N, K)
        grid = (B, -(-N // MOVE_ROWS), -(-C // MOVE_C))
        _launch("restore_move_kernel", x.device, grid, x, tokens, moved, *plan, out, N, C, K)
    return out


def tome_merge(x: torch.Tensor, size: torch.Tensor, metric: torch.Tensor, r: int):
    """(tokens [B, N - r, C], size [B, N - r], src [B, r], dst [B, r]) as `reference.tome_merge`."""
    x, size = _tokens(x), _fp32(size)
    B, N, C = x.shape
    metric = metric.contiguous()  # its own dtype (the contract's T): similarities are fp32 either way
    _check(size.shape == (B, N) and metric.dim() == 3 and metric.shape[:2] == (B, N)
           and metric.dtype in (torch.float32, torch.float16) and 0 < r <= (N - 1) // 2,
           f"tome_merge: size {tuple(size.shape)}, metric {tuple(metric.shape)}, r={r} for x {tuple(x.shape)}")
    size_out = torch.empty(B, N - r, dtype=torch.float32, device=x.device)
    src = torch.empty(B, r, dtype=torch.int64, device=x.device)
    dst = torch.empty(B, r, dtype=torch.int64, device=x.device)
    plan = _plan(B, N, x.device)
    if B:
        _launch("tome_decide_kernel", x.device, (B,), size, metric, size_out, src, dst, *plan, N, metric.shape[2], r)
    return _combine(x, plan, N - r, norm=True), size_out, src, dst


def diffrate_reduce(x: torch.Tensor, size: torch.Tensor, score: torch.Tensor, keep: int, merge: int):
    """(tokens [B, merge, C], size [B, merge], idx [B, keep - 1], dst [B, keep - merge]) as
    `reference.diffrate_reduce`."""
    x, size, score = _tokens(x), _fp32(size), _fp32(score)
    B, N, C = x.shape
    _check(size.shape == (B, N) and score.shape == (B, N - 1) and 2 <= merge < keep <= N,
           f"diffrate_reduce: size {tuple(size.shape)}, score {tuple(score.shape)}, keep={keep}, merge={merge} for N={N}")
    size_out = torch.empty(B, merge, dtype=torch.float32, device=x.device)
    idx = torch.empty(B, keep - 1, dtype=torch.int64, device=x.device)
    dst = torch.empty(B, keep - merge, dtype=torch.int64, device=x.device)
    plan = _plan(B, N, x.device)
    if B:
        _launch("diffrate_decide_kernel", x.device, (B,), x, size, score, size_out, idx, dst, *plan, N, C, keep, merge)
    return _combine(x, plan, merge, norm=True), size_out, idx, dst



__all__ = ["topk_prune", "evovit_select", "evovit_restore", "tome_merge", "diffrate_reduce", "hilo_attention"]
