# SPDX-License-Identifier: Apache-2.0
"""Flash-style attention with a per-key additive bias: softmax(q·kᵀ·scale + bias[key])·v in one pass.

Why: ToMe and DiffRate weight each key by its token size (proportional attention: + log size on every
query row's logits). Given that bias as a [B, 1, 1, N] `attn_mask`, PyTorch's
`scaled_dot_product_attention` cannot use its flash backend on a GPU and falls back to the memory-efficient
one (or to the maths, materialising the score matrix). This kernel takes the bias as [B, N] fp32 and never
writes a score: one read of q, k, v and the bias, one write of the output.

Layout: one program = BLOCK_M query rows of one head of one image (grid: query tiles x B*heads). It walks
the keys BLOCK_N at a time with the online softmax (running row maximum and sum, the accumulator rescaled
when the maximum grows), in base 2: the logits are (q·kᵀ·scale + bias)·log2(e), so every exponential is
one exp2. Scores, softmax and accumulation are fp32 (fp32 dots with input_precision="ieee", never TF32); the
probabilities are rounded to the input dtype for the second dot, as flash attention does, and the output
once at the end. Keys past N (the tail tile) and head channels past the head dim (padded to a power of two)
are masked. Each output element is one program's fixed sequence of operations: deterministic.

q, k, v are [B, H, N, d] with any strides whose last is 1 (the strided views of timm's qkv projection are
taken as they are); the output is written [B, N, H, d] (what the block's projection reads) and returned as
its [B, H, N, d] view. CPU tensors run the same kernel in Triton's interpreter (`mode.decorate`). Importing
this module imports no triton.
"""
from __future__ import annotations

import math
import threading
from typing import Optional

import torch

from .config import block_for
from .mode import cached, interpreting as _interpreting

MAX_HEAD_DIM = 128  # a [BLOCK_M, 256] fp32 accumulator would not fit a program's registers
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# (BLOCK_M, BLOCK_N, warps) by input dtype, the largest tiles whose sm_87 and sm_90 cubins keep to 128 registers
# with no stack frame at head dim 64 (tests/test_cubin_targets.py): 64 x 64 fp16 tiles need 180 on sm_87
TILES = {torch.float16: (64, 32, 4), torch.bfloat16: (64, 32, 4), torch.float32: (64, 32, 8)}

_lock = threading.RLock()


def biased_attention_kernel(q, k, v, bias, out, scale, N, HEADS, HD,
                            sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sbb, sob, son, soh,
                            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """Output rows program_id(0) * BLOCK_M ... of head program_id(1) % HEADS of image program_id(1) // HEADS.
    A plain function that `jit_kernel` decorates once triton is imported in the process's mode (the annotations
    are strings, and `tl` a module global set then)."""
    LOG2E: tl.constexpr = 1.4426950408889634
    head = tl.program_id(1) % HEADS
    b = (tl.program_id(1) // HEADS).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    d = tl.arange(0, BLOCK_D)
    dm = d < HD
    live = rows < N
    qt = tl.load(q + b * sqb + head * sqh + rows[:, None] * sqn + d[None, :], mask=live[:, None] & dm[None, :], other=0.0)
    k0 = k + b * skb + head * skh
    v0 = v + b * svb + head * svh
    qk_scale = scale * LOG2E
    m = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running row maximum (base-2 logits)
    total = tl.zeros([BLOCK_M], dtype=tl.float32)  # running sum of exp2(logit - m)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start in range(0, N, BLOCK_N):
        keys = start + tl.arange(0, BLOCK_N)
        km = keys < N
        kt = tl.load(k0 + keys[:, None] * skn + d[None, :], mask=km[:, None] & dm[None, :], other=0.0)
        s = tl.dot(qt, tl.trans(kt), input_precision="ieee")  # [BLOCK_M, BLOCK_N] fp32
        kb = tl.load(bias + b * sbb + keys, mask=km, other=float("-inf")) * LOG2E  # a tail key weighs 0
        s = s * qk_scale + kb[None, :]
        grown = tl.maximum(m, tl.max(s, axis=1))
        # a row whose keys so far all have -inf bias keeps m = -inf: exp2 against 0 then, never inf - inf
        base = tl.where(grown == float("-inf"), 0.0, grown)
        p = tl.exp2(s - base[:, None])
        alpha = tl.exp2(m - base)
        total = total * alpha + tl.sum(p, axis=1)
        vt = tl.load(v0 + keys[:, None] * svn + d[None, :], mask=km[:, None] & dm[None, :], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(vt.dtype), vt, input_precision="ieee")
        m = grown
    o = acc / total[:, None]  # a row whose every key has -inf bias: 0 / 0, NaN, as the softmax's
    dst = out + b * sob + head * soh + rows[:, None] * son + d[None, :]
    tl.store(dst, o.to(out.dtype.element_ty), mask=live[:, None] & dm[None, :])


jit_kernel = cached(biased_attention_kernel, "biased_attention")


def meta(dtype: torch.dtype, head_dim: int) -> dict[str, int]:
    """The constexprs of a launch: tiles for the input dtype, the head dim padded to a power of two (>= 16);
    past 64 channels, tiles of fewer query rows and keys, so the accumulator and scores keep their size."""
    block_m, block_n, _ = TILES[dtype]
    block_d = block_for(head_dim)
    shrink = max(64, block_d) // 64
    return {"BLOCK_M": block_m // shrink, "BLOCK_N": max(16, block_n // shrink), "BLOCK_D": block_d}


def fits(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: Optional[torch.Tensor]) -> bool:
    """Whether the kernel computes this attention: self-attention of equal [B, H, N, d] q/k/v of one dtype
    it takes, head dim <= MAX_HEAD_DIM, and a [B, N] bias (callers fall back to PyTorch's attention)."""
    return (bias is not None and q.dim() == 4 and q.shape == k.shape == v.shape and q.dtype == k.dtype == v.dtype
            and q.dtype in DTYPES and 1 <= q.shape[-1] <= MAX_HEAD_DIM and bias.shape == (q.shape[0], q.shape[2]))


def biased_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                     scale: Optional[float] = None) -> torch.Tensor:
    """softmax(q·kᵀ·scale + bias[:, None, None, :])·v: q/k/v [B, H, N, d], bias [B, N] (taken as fp32);
    scale defaults to d ** -0.5. Returns [B, H, N, d] in q's dtype (a view of [B, N, H, d] memory)."""
    if not fits(q, k, v, bias):
        raise ValueError(f"biased_attention takes q, k, v [B, H, N, d] of one dtype among {DTYPES} with d <= "
                         f"{MAX_HEAD_DIM} and bias [B, N]; got q {tuple(q.shape)} {q.dtype}, k {tuple(k.shape)} "
                         f"{k.dtype}, v {tuple(v.shape)} {v.dtype}, bias {tuple(bias.shape)}")
    if not (q.device == k.device == v.device == bias.device):
        raise ValueError(f"q, k, v and bias must be on one device, got {q.device}, {k.device}, {v.device}, {bias.device}")
    if not q.is_cuda and q.dtype == torch.bfloat16:
        raise ValueError("biased_attention takes bfloat16 only on CUDA tensors: Triton's interpreter (CPU tensors) "
                         "does not compute bfloat16 dots; pass float16 or float32")
    B, H, N, d = q.shape
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    bias = bias.to(torch.float32).contiguous()
    out = torch.empty(B, N, H, d, dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out.transpose(1, 2)
    params = meta(q.dtype, d)
    grid = (-(-N // params["BLOCK_M"]), B * H)
    scale = d ** -0.5 if scale is None else float(scale)
    args = (q, k, v, bias, out, scale, N, H, d, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], bias.stride(0),
            *out.stride()[:3])
    if q.is_cuda:
        with torch.cuda.device(q.device):
            jit_kernel()[grid](*args, **params, num_warps=TILES[q.dtype][2], num_stages=1)
    else:
        with _lock, _interpreting():
            jit_kernel(interpret=True)[grid](*args, **params)
    return out.transpose(1, 2)


def compile_cubin(dtype: torch.dtype, head_dim: int, arch: int) -> dict:
    """The kernel compiled for compute capability `arch` (no GPU needed) as the JIT specialises a launch
    at DeiT-like shapes (16-byte aligned pointers, strides and head dim divisible by 16): {"name", "warps",
    "shared", "cubin"}, what `exporter.ops.cubin.variant` reads. Needs Triton in compiled mode (a fresh
    process)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = jit_kernel()
    names = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
    ptr = "*" + names[str(dtype).removeprefix("torch.")]
    params = meta(dtype, head_dim)
    sig = {n: ("constexpr" if n in params else ptr if n in ("q", "k", "v", "out") else "*fp32" if n == "bias"
               else "fp32" if n == "scale" else "i32") for n in fn.arg_names}
    # what the JIT derives for 16-byte aligned pointers and sizes divisible by 16 (N is not: 197)
    aligned = [n for n in fn.arg_names if sig[n].startswith("*") or n in ("HD", "sqb", "sqh", "sqn", "skb", "skh", "skn",
                                                                           "svb", "svh", "svn", "sob", "son", "soh")]
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in aligned}
    source = ASTSource(fn=fn, signature=sig, constexprs=params, attrs=attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": TILES[dtype][2], "num_stages": 1})
    md = compiled.metadata
    return {"name": md.name, "warps": md.num_warps, "shared": md.shared, "cubin": compiled.asm["cubin"]}


def error_bound(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> tuple[float, torch.Tensor]:
    """(the largest |kernel - exact| this kernel may give on these inputs, exact), exact = the attention with the
    bias as a mask in float64. What the tests (interpreter) and benchmarks/gpu_attention_bench.py (GPU) hold it to.

    From the dtypes: the kernel computes products, softmax and sums in fp32, as PyTorch's fp32 attention does in
    another order, so it may be as far off as that (`own`: SDPA on the fp32 values); it rounds twice to the input
    dtype (probabilities before the second product, the output), each within half an ulp (eps / 2) of the largest
    |v| (eps * max|v| in all; in fp32 the first is none); and it takes its logits in base 2 through five fp32
    roundings of its own (scale * log2(e), that times q.k, bias * log2(e), their sum, minus the row maximum m),
    each within u32 * (|s| + |m|) of a base-2 logit s, which moves a probability by ln 2 times that, in its
    numerator and in the row's sum: 10 * ln 2 * u32 * W * max|v|, W the largest over rows of the
    probability-weighted sum of |s| + |m| (keys of zero probability move nothing).
    """
    attend = torch.nn.functional.scaled_dot_product_attention
    mask = bias.double()[:, None, None, :]
    exact = attend(q.double(), k.double(), v.double(), attn_mask=mask)
    own = (attend(q.float(), k.float(), v.float(), attn_mask=bias.float()[:, None, None, :]).double() - exact).abs().max()
    logits = (q.double() @ k.double().transpose(-2, -1) * q.shape[-1] ** -0.5 + mask) / math.log(2)
    p = logits.softmax(-1)
    top = logits.max(-1, keepdim=True).values.abs()
    spread = torch.where(p > 0, p * (logits.abs() + top), 0.0).sum(-1).max()
    eps, u32 = torch.finfo(q.dtype).eps, torch.finfo(torch.float32).eps / 2
    return float(own + (eps + 10 * math.log(2) * u32 * spread) * v.abs().max().double()), exact


__all__ = ["biased_attention", "fits", "error_bound", "compile_cubin", "MAX_HEAD_DIM"]

