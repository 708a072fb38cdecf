# SPDX-License-Identifier: Apache-2.0
"""The one table of the fused kernels: which kernels make each op, their launch ABI, tiles, warps and
the variants compiled ahead of time. The Python launches (`kernels/__init__.py`), the AOT generator
(`exporter/ops/aot.py`) and the C launchers it writes all read it. No triton import here.

Every token op is a decision kernel and a movement kernel (`_triton.py` says why); HiLo's attention
is one fused kernel. The tiles are fixed, so no token count needs a variant of its own: a kernel's
variants differ only by the token dtype (kernels reading no token tensor have one) and by "aligned"
(the parameters in `Kernel.aligned` hinted divisible by 16, as the JIT specialises C % 16 == 0 and
16-byte aligned pointers, which is what gives fp16 rows 128-bit loads; chosen at launch, with the
generic variant as fallback). HiLo's head dim is looped over in chunks, so it needs no variant either.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

MIN_BLOCK = 16  # tl.dot needs every dimension >= 16
DTYPES = ("fp32", "fp16")  # index = the C launchers' `dtype` (0 = float32, 1 = float16)
MOVE_ROWS = 16  # movement tiles: [MOVE_ROWS, MOVE_C] output rows x channels per program
MOVE_C = 128
HILO_ROWS = 32  # hilo_attention: window tokens in one program's tile (8 windows of 2x2; AOT: windows up to 5x5)
HILO_CHUNK = 16  # hilo_attention: head-dim channels per dot step

DECIDE = {"BLOCK_I": 32, "BLOCK_J": 64}  # tokens decided at a time x compared at a time
SIMILARITY = {"BLOCK_I": 32, "BLOCK_J": 32, "BLOCK_K": 16}  # ToMe/DiffRate: + channels per dot step
MOVE = {"BLOCK_R": MOVE_ROWS, "BLOCK_C": MOVE_C}


@dataclass(frozen=True)
class Kernel:
    name: str  # the function in _triton.py (or kernels/<module>.py)
    role: str  # "decide", "move" or "fused"
    ops: tuple[str, ...]  # the ops that launch it
    params: tuple[str, ...]  # non-constexpr parameters, in order: the launch ABI
    pointers: dict  # parameter -> Triton pointer type ("T" = the token dtype)
    constexprs: dict = field(default_factory=dict)
    aligned: tuple[str, ...] = ()  # parameters the aligned variant takes as divisible by 16; () = none
    warps: int = 4
    generic_warps: Optional[int] = None  # the generic variant's, if not `warps` (its scalar loads need more registers)
    stages: int = 1  # no software pipelining: the tiles are small, and pipelined dot loops made sm_87 spill
    module: str = "_triton"


PLAN = {"plan_i": "i32", "plan_f": "fp32"}

KERNELS = {k.name: k for k in (
    Kernel("select_decide_kernel", "decide", ("topk_prune", "evovit_select"),
           ("score", "idx", "plan_i", "plan_f", "N", "k", "extra"), {"score": "fp32", "idx": "i64", **PLAN},
           {"BLOCK_I": DECIDE["BLOCK_I"], "BLOCK_J": DECIDE["BLOCK_J"]}),
    Kernel("tome_decide_kernel", "decide", ("tome_merge",),
           ("size", "metric", "size_out", "src", "dst", "plan_i", "plan_f", "N", "Cm", "r"),
           {"size": "fp32", "metric": "T", "size_out": "fp32", "src": "i64", "dst": "i64", **PLAN},
           SIMILARITY, aligned=("metric", "Cm")),
    Kernel("diffrate_decide_kernel", "decide", ("diffrate_reduce",),
           ("x", "size", "score", "size_out", "idx", "dst", "plan_i", "plan_f", "N", "C", "keep", "merge"),
           {"x": "T", "size": "fp32", "score": "fp32", "size_out": "fp32", "idx": "i64", "dst": "i64", **PLAN},
           SIMILARITY, aligned=("x", "C")),
    Kernel("combine_kernel", "move", ("topk_prune", "evovit_select", "tome_merge", "diffrate_reduce"),
           ("x", "plan_i", "plan_f", "out", "N", "C", "M", "norm"), {"x": "T", "out": "T", **PLAN},
           MOVE, aligned=("x", "out", "C"), generic_warps=8),  # generic: 8 elements a thread, as fp32 or unaligned
    Kernel("restore_decide_kernel", "decide", ("evovit_restore",), ("idx", "plan_i", "plan_f", "N", "K"),
           {"idx": "i64", **PLAN}, {"BLOCK_I": 256}),
    Kernel("restore_move_kernel", "move", ("evovit_restore",),
           ("x", "tokens", "moved", "plan_i", "plan_f", "out", "N", "C", "K"),
           {"x": "T", "tokens": "T", "moved": "T", "out": "T", **PLAN}, MOVE,
           aligned=("x", "tokens", "moved", "out", "C"), generic_warps=8),
    # AOT: windows of up to 5x5 fill a HILO_ROWS tile (the JIT takes larger tiles for larger windows); 64 rows
    # would take windows to 8x8 but its fp32 score/probability tiles need 183+ registers
    Kernel("hilo_attention_kernel", "fused", ("hilo_attention",),
           ("qkv", "pad", "out", "H", "W", "S", "HEADS", "HD", "WINDOWS"), {"qkv": "T", "pad": "T", "out": "T"},
           {"BLOCK_M": HILO_ROWS, "BLOCK_D": HILO_CHUNK}, aligned=("qkv", "pad", "out", "HD"), warps=4, module="hilo_attention"),
)}

OPS = {op: tuple(k.name for k in KERNELS.values() if op in k.ops)  # launch order: decide, then move
       for op in ("topk_prune", "evovit_select", "evovit_restore", "tome_merge", "diffrate_reduce", "hilo_attention")}


@dataclass(frozen=True)
class Variant:
    """One compiled form of a kernel (for one architecture, chosen by `aot.compile_variant`)."""
    kernel: str
    dtype: Optional[str]  # "fp32" / "fp16"; None: the kernel reads no token tensor (one variant serves both)
    aligned: bool  # Kernel.aligned taken as divisible by 16


def token_dtypes(kernel: str) -> tuple[Optional[str], ...]:
    return DTYPES if "T" in KERNELS[kernel].pointers.values() else (None,)


def variants(op: str, N: Optional[int] = None) -> list[Variant]:
    """The variants `op` may launch for N tokens. Any N: the tiles are fixed, so the list is the same for
    every N (the argument is checked, and is where a token-count specialisation would go)."""
    if op not in OPS:
        raise KeyError(op)
    if N is not None and N < 2:
        raise ValueError(f"{op}: N = {N} tokens")
    return [Variant(name, dtype, aligned) for name in OPS[op] for dtype in token_dtypes(name)
            for aligned in ((True, False) if KERNELS[name].aligned else (False,))]  # aligned first: the common case


def all_variants() -> list[Variant]:
    """Every variant of every kernel, each once (kernels shared by several ops are listed once)."""
    return list(dict.fromkeys(v for op in OPS for v in variants(op)))


def block_for(need: int) -> int:
    """The smallest power of two >= need (at least MIN_BLOCK)."""
    block = MIN_BLOCK
    while block < need:
        block *= 2
    return block


def constexprs(kernel: str) -> dict[str, int]:
    return dict(KERNELS[kernel].constexprs)


def launch_options(kernel: str, aligned: bool = True) -> dict[str, int]:
    """num_warps and num_stages of the aligned (or only) or the generic variant, the same for the JIT
    launches and the AOT cubins."""
    k = KERNELS[kernel]
    return {"num_warps": k.warps if aligned or k.generic_warps is None else k.generic_warps, "num_stages": k.stages}


def is_aligned(kernel: str, args: dict) -> bool:
    """Whether a launch with `args` (parameter -> int or tensor) may take the aligned variant: every
    parameter of `Kernel.aligned` divisible by 16 (a tensor: its address), as the JIT specialises and the
    C launchers choose."""
    names = KERNELS[kernel].aligned
    return bool(names) and all((a.data_ptr() if hasattr(a, "data_ptr") else a) % 16 == 0
                               for a in (args[n] for n in names))


def plan_ints(N: int) -> int:
    """int32 words of one image's plan (`_triton.py`): off N + 1, tok N, aux N + 1."""
    return 3 * N + 2


def plan_floats(N: int) -> int:
    """fp32 words of one image's plan: w N, aux N."""
    return 2 * N
