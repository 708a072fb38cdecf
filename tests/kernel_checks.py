# SPDX-License-Identifier: Apache-2.0
"""Checks shared by the kernel tests (CPU interpreter and CUDA): each kernel against `exporter.ops.reference`.

Indices: equal to the reference's where no scores tie; where they may, the kernel's choice must be a
valid one (every chosen score >= every unchosen, best first; every match a best match). Values: the
reference *replayed* with the kernel's indices, evaluated in float64 where the reference allows,
within the token dtype's rounding: fp16 output is rounded once (plus the reference's own fp16
rounding of weights), fp32 within ~1e-5 relative of the data's magnitude.
"""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import torch

from exporter.ops import reference as ref

RTOL = {torch.float32: 1e-5, torch.float16: 2.0**-10}  # fp16: two half-ulps (kernel's rounding + reference's)


def close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, scale: float = 1.0) -> None:
    """|actual - expected| <= rtol * (|expected| + scale), rtol from the token dtype."""
    rtol = RTOL[dtype]
    torch.testing.assert_close(actual.double().cpu(), expected.double().cpu(), rtol=rtol, atol=rtol * scale)


def valid_top(score: torch.Tensor, idx: torch.Tensor) -> None:
    """idx [B, k] picks k distinct positions of highest score, best first."""
    score, idx = score.cpu(), idx.cpu()
    picked = score.gather(1, idx)
    assert (picked[:, :-1] >= picked[:, 1:]).all(), "not best first"
    left = score.clone().scatter_(1, idx, float("-inf"))
    assert (picked.min(dim=1).values >= left.max(dim=1).values).all(), "a better score was left out"
    assert all(len(set(row.tolist())) == idx.shape[1] for row in idx), "repeated index"


def same_indices(kernel: torch.Tensor, reference: torch.Tensor, ties: bool, score: torch.Tensor) -> None:
    if ties:
        valid_top(score, kernel)
    else:
        assert torch.equal(kernel.cpu(), reference.cpu())


def check_topk_prune(kernels, x, score, k, fuse, ties=False):
    tokens, idx = kernels.topk_prune(x, score, k, fuse)
    assert tokens.dtype == x.dtype and idx.dtype == torch.int64 and tokens.shape == (x.shape[0], 1 + k + fuse, x.shape[2])
    same_indices(idx, ref.topk_prune(x.cpu(), score.cpu(), k, fuse)[1], ties, score)
    kept = ref.choose_topk_prune(score.cpu().double(), k, idx.cpu())
    expected, _ = ref.apply_topk_prune(x.cpu().double(), kept, fuse)
    assert torch.equal(tokens[:, : 1 + k].cpu(), expected[:, : 1 + k].to(x.dtype)), "kept rows are not exact copies"
    if fuse:  # sum of up to N scores (< 1 each) times |x|
        close(tokens[:, -1], expected[:, -1], x.dtype, scale=float(score.sum(dim=1).max()) * float(x.abs().max()))


def check_evovit_select(kernels, x, g, keep, ties=False):
    tokens, idx = kernels.evovit_select(x, g, keep)
    assert tokens.shape == (x.shape[0], keep + 2, x.shape[2]) and tokens.dtype == x.dtype
    same_indices(idx, ref.evovit_select(x.cpu(), g.cpu(), keep)[1], ties, g)
    expected, _ = ref.apply_evovit_select(x.cpu().double(), ref.choose_evovit_select(g.cpu().double(), keep, idx.cpu()))
    assert torch.equal(tokens[:, :-1].cpu(), expected[:, :-1].to(x.dtype))
    close(tokens[:, -1], expected[:, -1], x.dtype, scale=float(x.abs().max()))  # a convex combination of rows
    return idx


def check_evovit_restore(kernels, x, tokens, moved, idx):
    out = kernels.evovit_restore(x, tokens, moved, idx)
    expected = ref.evovit_restore(x.cpu(), tokens.cpu(), moved.cpu(), idx.cpu())
    assert out.dtype == x.dtype and torch.equal(out.cpu(), expected), "restore is a copy or one add: exact"


def tome_similarity(metric: torch.Tensor) -> torch.Tensor:
    """[B, A, B] cosine similarities in float64, the class token's row -inf."""
    m = metric.cpu().double()
    a, b = m[:, ::2], m[:, 1::2]
    sim = (a / a.norm(dim=-1, keepdim=True)) @ (b / b.norm(dim=-1, keepdim=True)).transpose(1, 2)
    sim[:, 0] = float("-inf")
    return sim


def check_tome_merge(kernels, x, size, metric, r, ties=False):
    B, N, C = x.shape
    tokens, size_out, src, dst = kernels.tome_merge(x, size, metric, r)
    assert tokens.shape == (B, N - r, C) and size_out.shape == (B, N - r) and src.shape == dst.shape == (B, r)
    if ties:  # each source matched to a best partner, the r best-matched sources, best first
        sim = tome_similarity(metric)
        best = sim.max(dim=-1).values
        rows = sim.gather(1, src.cpu()[..., None].expand(-1, -1, sim.shape[2]))  # [B, r, B]: the sources' rows
        got = rows.gather(2, dst.cpu()[..., None])[..., 0]
        torch.testing.assert_close(got, best.gather(1, src.cpu()), rtol=1e-6, atol=1e-6)
        assert (src.cpu() != 0).all()
        chosen_best = best.gather(1, src.cpu())
        assert (chosen_best[:, :-1] >= chosen_best[:, 1:] - 1e-6).all()
        left = best.clone().scatter_(1, src.cpu(), float("-inf"))
        assert (chosen_best.min(dim=1).values >= left.max(dim=1).values - 1e-6).all()
    else:
        _, _, ref_src, ref_dst = ref.tome_merge(x.cpu(), size.cpu(), metric.cpu(), r)
        assert torch.equal(src.cpu(), ref_src) and torch.equal(dst.cpu(), ref_dst)
    matching = ref.choose_tome_merge(metric.cpu().float(), r, (src.cpu(), dst.cpu()))
    exp_tokens, exp_size, _, _ = ref.apply_tome_merge(x.cpu().double(), size.cpu(), matching)
    close(tokens, exp_tokens, x.dtype, scale=float(x.abs().max()))
    close(size_out, exp_size, torch.float32, scale=float(size.max()))


def check_diffrate_reduce(kernels, x, size, score, keep, merge, ties=False):
    B, N, C = x.shape
    tokens, size_out, idx, dst = kernels.diffrate_reduce(x, size, score, keep, merge)
    assert tokens.shape == (B, merge, C) and size_out.shape == (B, merge)
    assert idx.shape == (B, keep - 1) and dst.shape == (B, keep - merge)
    if ties:
        valid_top(score, idx - 1)
        order = torch.cat([torch.zeros_like(idx[:, :1]), idx], dim=1).cpu()
        rows = ref.gather_tokens(x.cpu().double(), order)
        rows = rows / rows.norm(dim=-1, keepdim=True)
        sim = rows[:, merge:] @ rows[:, 1:merge].transpose(1, 2)  # tail x head without the class token
        got = sim.gather(2, dst.cpu()[..., None] - 1)[..., 0]
        torch.testing.assert_close(got, sim.max(dim=-1).values, rtol=1e-6, atol=1e-6)
    else:
        _, _, ref_idx, ref_dst = ref.diffrate_reduce(x.cpu(), size.cpu(), score.cpu(), keep, merge)
        assert torch.equal(idx.cpu(), ref_idx) and torch.equal(dst.cpu(), ref_dst)
    reduction = ref.choose_diffrate_reduce(x.cpu().double(), score.cpu(), keep, merge, (idx.cpu(), dst.cpu()))
    exp_tokens, exp_size, _, _ = ref.apply_diffrate_reduce(x.cpu().double(), size.cpu(), reduction)
    close(tokens, exp_tokens, x.dtype, scale=float(x.abs().max()))
    close(size_out, exp_size, torch.float32, scale=float(size.max()) * keep)


WORKER = r"""
import io, os, sys
if os.environ.get("TRITON_INTERPRET") == "0":
    del os.environ["TRITON_INTERPRET"]
import torch
from exporter.ops import kernels
while True:
    size = int.from_bytes(sys.stdin.buffer.read(8), "little")
    if size == 0:
        break
    name, args = torch.load(io.BytesIO(sys.stdin.buffer.read(size)))
    try:
        result = ("ok", getattr(kernels, name)(*args))
    except Exception as error:  # reported to the test process
        result = ("error", f"{type(error).__name__}: {error}")
    out = io.BytesIO()
    torch.save(result, out)
    sys.stdout.buffer.write(len(out.getvalue()).to_bytes(8, "little") + out.getvalue())
    sys.stdout.buffer.flush()
"""


class KernelWorker:
    """`exporter.ops.kernels` in a fresh process, for a test process whose triton is in the other mode
    (Triton fixes interpreter vs compiled when it is first imported). Calls are pickled with torch.save."""

    def __init__(self, interpret: bool):
        env = dict(os.environ, TRITON_INTERPRET="1" if interpret else "0",
                   PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]))
        self.process = subprocess.Popen([sys.executable, "-c", WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)

    def __getattr__(self, name):
        def call(*args):
            buf = io.BytesIO()
            torch.save((name, args), buf)
            self.process.stdin.write(len(buf.getvalue()).to_bytes(8, "little") + buf.getvalue())
            self.process.stdin.flush()
            size = int.from_bytes(self.process.stdout.read(8), "little")
            assert size, "the kernel worker died"
            status, result = torch.load(io.BytesIO(self.process.stdout.read(size)))
            if status != "ok":
                raise ValueError(result) if result.startswith("ValueError") else RuntimeError(result)
            return result

        return call

    def close(self):
        self.process.stdin.write((0).to_bytes(8, "little"))
        self.process.stdin.close()
        self.process.wait(timeout=30)
