# SPDX-License-Identifier: Apache-2.0
"""The fused kernel of `hilo_attention` (LITv2 HiLo's Hi-Fi window attention): one pass over q/k/v.

Why one kernel: in standard ops a window attention of s*s = 4 tokens is a padded copy of the map, two
rank-6 transposes, two batched MatMuls of 4x4 tiles, a softmax and the transposes back, each a full
memory pass for almost no arithmetic. Here every program reads its windows' q/k/v rows straight from
the [B, H*W, 3*D] projection (padding tokens read from `pad`, never materialised), attends and writes
the output rows in map order: one read of qkv, one write of the output.

Layout: one program = WINDOWS consecutive windows (row-major over the window grid) of one head of one
image (grid: window groups x B*heads); their tokens are the rows of one [BLOCK_M, BLOCK_D] tile (row r:
window r // (s*s), token r % (s*s)), so the scores are one [BLOCK_M, BLOCK_M] tensor-core dot masked to
the block diagonal of each window.
For s = 2 that is 8 windows in a 32-row tile: an 8x arithmetic waste that costs nothing next to the
memory traffic, and tl.dot's 16-row minimum would waste as much on a per-window tile. Scores, softmax and
accumulation are fp32 (fp32 dots with input_precision="ieee", never TF32); the probabilities are rounded
to the token dtype for the second dot, as the reference's half-precision softmax output is.

The kernel's non-constexpr parameters, in order, are the launch ABI an AOT launcher passes
(`jit_kernel()` returns the JIT function for the generator; blocks and warps are in `config.py`). CPU
tensors run the same kernel in Triton's interpreter (see `mode.decorate` for how the process's Triton mode is
chosen). Importing this module imports no triton.
"""
from __future__ import annotations

import threading

import torch

from .config import HILO_CHUNK, HILO_ROWS, block_for, launch_options
from .mode import cached, interpreting as _interpreting

MAX_WINDOW_TOKENS = 256  # s*s above this would not fit a program's registers (s <= 16)

_lock = threading.RLock()


def hilo_attention_kernel(qkv, pad, out, H, W, S, HEADS, HD, WINDOWS,
                          BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """WINDOWS windows (row-major over the window grid) from program_id(0) * WINDOWS on, of head
    program_id(1) % HEADS of image program_id(1) // HEADS: the output rows of their real tokens.
    The head dim is taken BLOCK_D channels at a time (any HD): the scores accumulate over q/k chunks, then
    each output chunk is its own dot with the v chunk, so no [BLOCK_M, HD] tile is ever live.
    A plain function that `jit_kernel` decorates once triton is imported in the process's mode (the annotations
    are strings, and `tl` a module global set then)."""
    pid = tl.program_id(0)
    head = tl.program_id(1) % HEADS
    b = (tl.program_id(1) // HEADS).to(tl.int64)
    N = H * W
    D = HEADS * HD
    WG = (W + S - 1) // S
    G = (H + S - 1) // S * WG
    scale = 1.0 / tl.sqrt_rn(HD.to(tl.float32))  # head_dim ** -0.5, as the reference (to an ulp)
    T = S * S
    r = tl.arange(0, BLOCK_M)
    win = r // T
    g = pid * WINDOWS + win  # window index in the map's window grid
    alive = (win < WINDOWS) & (g < G)
    y = (g // WG) * S + (r % T) // S
    x = (g % WG) * S + (r % T) % S
    real = alive & (y < H) & (x < W)  # alive but not real: a padding token (bottom/right)
    n = (y * W + x).to(tl.int64)
    E = 3 * D
    rows = qkv + b * N * E + n[:, None] * E + head * HD
    cols = pad + head * HD
    s = tl.zeros([BLOCK_M, BLOCK_M], dtype=tl.float32)
    for d0 in range(0, HD, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        dm = d < HD
        q = tl.load(rows + d[None, :], mask=real[:, None] & dm[None, :], other=0.0)
        q = tl.where(real[:, None], q, tl.load(cols + d, mask=dm, other=0.0)[None, :])
        k = tl.load(rows + D + d[None, :], mask=real[:, None] & dm[None, :], other=0.0)
        k = tl.where(real[:, None], k, tl.load(cols + D + d, mask=dm, other=0.0)[None, :])
        s += tl.dot(q, tl.trans(k), input_precision="ieee")
    s = s * scale  # [BLOCK_M, BLOCK_M] fp32
    same = (win[:, None] == win[None, :]) & alive[None, :]
    s = tl.where(same, s, -1.0e30)  # finite: a dead row's softmax is uniform, not NaN (never stored)
    p = tl.exp(s - tl.max(s, axis=1)[:, None])
    p = tl.where(same, p, 0.0)
    total = tl.where(alive, tl.sum(p, axis=1), 1.0)  # a dead row has no key at all
    p = (p / total[:, None]).to(qkv.dtype.element_ty)
    dst = out + b * N * D + n[:, None] * D + head * HD
    for d0 in range(0, HD, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        dm = d < HD
        v = tl.load(rows + 2 * D + d[None, :], mask=real[:, None] & dm[None, :], other=0.0)
        v = tl.where(real[:, None], v, tl.load(cols + 2 * D + d, mask=dm, other=0.0)[None, :])
        o = tl.dot(p, v, input_precision="ieee")
        tl.store(dst + d[None, :], o.to(out.dtype.element_ty), mask=real[:, None] & dm[None, :])


jit_kernel = cached(hilo_attention_kernel, "hilo_attention")


def rows(window: int) -> int:
    """BLOCK_M, the rows of a program's tile: HILO_ROWS (the AOT cubins' tile, windows up to 5x5), more for
    larger windows (JIT only)."""
    tokens = window * window
    if tokens > MAX_WINDOW_TOKENS:
        raise ValueError(f"windows of {window}x{window} tokens exceed the kernel's {MAX_WINDOW_TOKENS} tokens "
                         "a program")
    return max(HILO_ROWS, block_for(tokens))


def hilo_attention(qkv: torch.Tensor, pad: torch.Tensor, height: int, width: int, window: int,
                   heads: int) -> torch.Tensor:
    """`torch.ops.exporter.hilo_attention` as the fused kernel: [B, H*W, 3*D] q/k/v and [3*D] pad -> [B, H*W, D]."""
    if qkv.dim() != 3 or qkv.dtype not in (torch.float32, torch.float16):
        raise ValueError(f"qkv must be [B, N, 3*D] float32 or float16, got {tuple(qkv.shape)} {qkv.dtype}")
    b, n, e = qkv.shape
    if n != height * width or e % 3 or (e // 3) % heads or window < 1:
        raise ValueError(f"qkv {tuple(qkv.shape)} does not fit a {height}x{width} map of {heads} heads in "
                         f"windows of {window}")
    if pad.shape != (e,) or pad.dtype != qkv.dtype or pad.device != qkv.device:
        raise ValueError(f"pad must be [{e}] {qkv.dtype} on {qkv.device}, "
                         f"got {tuple(pad.shape)} {pad.dtype} on {pad.device}")
    d = e // 3
    head_dim = d // heads
    qkv, pad = qkv.contiguous(), pad.contiguous()
    out = torch.empty(b, n, d, dtype=qkv.dtype, device=qkv.device)
    if b == 0 or n == 0:
        return out
    block_m = rows(window)
    per_program = block_m // (window * window)
    windows = -(-height // window) * -(-width // window)
    grid = (-(-windows // per_program), b * heads)
    args = (qkv, pad, out, height, width, window, heads, head_dim, per_program)
    meta = {"BLOCK_M": block_m, "BLOCK_D": HILO_CHUNK}
    if qkv.is_cuda:
        with torch.cuda.device(qkv.device):
            jit_kernel()[grid](*args, **meta, **launch_options("hilo_attention_kernel"))
    else:
        with _lock, _interpreting():
            jit_kernel(interpret=True)[grid](*args, **meta)
    return out
