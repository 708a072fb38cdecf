"""The one table of the fused kernels: which kernels make each op, their launch ABI, tiles, warps and
the variants compiled ahead of time. The Python launches (`kernels/__init__.py`), the AOT generator
(`exporter/ops/aot.py`) and the C launchers it writes all read it. No triton import here.

Every token op is a decision kernel and a movement kernel (`_triton.py` says why); HiLo's attention
is one fused kernel. The tiles are fixed, so no token count needs a variant of its own: a kernel's
variants differ only by the token dtype (kernels reading no token tensor have one), by "aligned" (the
parameters in `Kernel.aligned` hinted divisible by 16, as the JIT specialises C % 16 == 0 and 16-byte
aligned pointers, which is what gives fp16 rows 128-bit loads; chosen at launch, with the generic
variant as fallback), and for HiLo by the head-dim block.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

MIN_BLOCK = 16  # tl.dot needs every dimension >= 16
DTYPES = ("fp32", "fp16")  # index = the C launchers' `dtype` (0 = float32, 1 = float16)
MOVE_ROWS = 16  # movement tiles: [MOVE_ROWS, MOVE_C] output rows x channels per program
MOVE_C = 64
HILO_ROWS = 64  # hilo_attention: window tokens packed into one program's tile (16 windows of 2x2)
HILO_BLOCKS = (16, 32, 64, 128)  # head-dim blocks compiled ahead of time (head_dim <= 128)

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
    constexprs: dict = field(default_factory=dict)  # (HiLo's come from its block: `constexprs`)
    aligned: tuple[str, ...] = ()  # parameters the aligned variant takes as divisible by 16; () = none
    warps: int = 4
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
           MOVE, aligned=("x", "out", "C")),
    Kernel("restore_decide_kernel", "decide", ("evovit_restore",), ("idx", "plan_i", "plan_f", "N", "K"),
           {"idx": "i64", **PLAN}, {"BLOCK_I": 256}),
    Kernel("restore_move_kernel", "move", ("evovit_restore",),
           ("x", "tokens", "moved", "plan_i", "plan_f", "out", "N", "C", "K"),
           {"x": "T", "tokens": "T", "moved": "T", "out": "T", **PLAN}, MOVE,
           aligned=("x", "tokens", "moved", "out", "C")),
    # its BLOCK_D covers the head dim (windows of up to 8x8 fill a HILO_ROWS tile)
    Kernel("hilo_attention_kernel", "fused", ("hilo_attention",),
           ("qkv", "pad", "out", "H", "W", "S", "HEADS", "HD", "WINDOWS"), {"qkv": "T", "pad": "T", "out": "T"},
           module="hilo_attention"),
)}

OPS = {op: tuple(k.name for k in KERNELS.values() if op in k.ops)  # launch order: decide, then move
       for op in ("topk_prune", "evovit_select", "evovit_restore", "tome_merge", "diffrate_reduce", "hilo_attention")}


@dataclass(frozen=True)
class Variant:
    """One compiled form of a kernel (for one architecture, chosen by `aot.compile_variant`)."""
    kernel: str
    dtype: Optional[str]  # "fp32" / "fp16"; None: the kernel reads no token tensor (one variant serves both)
    aligned: bool  # Kernel.aligned taken as divisible by 16
    block: int = 0  # HiLo's head-dim block; 0 for the others


def token_dtypes(kernel: str) -> tuple[Optional[str], ...]:
    return DTYPES if "T" in KERNELS[kernel].pointers.values() else (None,)


def variants(op: str, N: Optional[int] = None, head_dim: Optional[int] = None) -> list[Variant]:
    """The variants `op` may launch: for N tokens (any N: the tiles are fixed, so the list is the same),
    for HiLo the head dim's block (every block when None)."""
    if op not in OPS:
        raise KeyError(op)
    if N is not None and N < 2:
        raise ValueError(f"{op}: N = {N} tokens")
    out = []
    for name in OPS[op]:
        blocks = (block_for(head_dim),) if head_dim is not None else HILO_BLOCKS if op == "hilo_attention" else (0,)
        for dtype in token_dtypes(name):
            for aligned in (False, True) if KERNELS[name].aligned else (False,):
                out += [Variant(name, dtype, aligned, block) for block in blocks]
    return out


def all_variants() -> list[Variant]:
    """Every variant of every kernel, each once (kernels shared by several ops are listed once)."""
    seen = {}
    for op in OPS:
        for v in variants(op):
            seen.setdefault(v, None)
    return list(seen)


def block_for(need: int) -> int:
    """The smallest power of two >= need (at least MIN_BLOCK)."""
    block = MIN_BLOCK
    while block < need:
        block *= 2
    return block


def constexprs(kernel: str, block: int = 0) -> dict[str, int]:
    """The constexpr arguments of `kernel` (HiLo's: for head-dim block `block`)."""
    if kernel == "hilo_attention_kernel":
        return {"BLOCK_M": HILO_ROWS, "BLOCK_D": block}
    return dict(KERNELS[kernel].constexprs)


def num_warps(kernel: str, block: int = 0) -> int:
    """HiLo: 8 warps from a 128 head-dim block; the others their table's."""
    if kernel == "hilo_attention_kernel":
        return 8 if block >= 128 else 4
    return KERNELS[kernel].warps


def plan_ints(N: int) -> int:
    """int32 words of one image's plan (`_triton.py`): off N + 1, tok N, aux N + 1."""
    return 3 * N + 2


def plan_floats(N: int) -> int:
    """fp32 words of one image's plan: w N, aux N."""
    return 2 * N
