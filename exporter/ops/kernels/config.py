"""Block sizes and warps of every kernel: one table for the Python launches and the AOT cubins.

A kernel's variant is fixed by its token dtype and one power-of-two block `BLOCK` that must cover the
op's `need` (patches for the selections and DiffRate, kept slots for the restore, max(|A|, |B|) for
ToMe); the other tiles follow from BLOCK so a [BLOCK, BLOCK_C] fp32 tile stays near 4K elements
(about 32 registers a thread at 4 warps). The AOT launchers pick the smallest compiled BLOCK >= need.
No triton import here: the AOT generator and the tests read this without a GPU.
"""
from __future__ import annotations

from dataclasses import dataclass

MIN_BLOCK = 16  # tl.dot needs every dimension >= 16
AOT_BLOCKS = (16, 32, 64, 128, 256)  # the AOT library serves need <= 256: N <= 257 tokens (ToMe: N <= 256)
BLOCK_J = 16  # positions ranked at a time (a [BLOCK_J, BLOCK] comparison)
TAIL_BLOCK = 16  # DiffRate tail tokens matched at a time
HILO_ROWS = 64  # hilo_attention: window tokens packed into one program's tile (16 windows of 2x2)


@dataclass(frozen=True)
class Kernel:
    name: str  # the kernel function in _triton.py (or kernels/<op>.py), and the C launcher's `exporter_<op>`
    op: str
    params: tuple[str, ...]  # non-constexpr parameters, in order: the launch ABI
    pointers: dict  # parameter -> Triton pointer type ("T" = the token dtype)


KERNELS = {
    "topk_prune": Kernel("topk_prune_kernel", "topk_prune", ("x", "score", "tokens", "idx", "N", "C", "k", "fuse"),
                         {"x": "T", "score": "fp32", "tokens": "T", "idx": "i64"}),
    "evovit_select": Kernel("evovit_select_kernel", "evovit_select", ("x", "g", "tokens", "idx", "N", "C", "keep"),
                            {"x": "T", "g": "fp32", "tokens": "T", "idx": "i64"}),
    "evovit_restore": Kernel("evovit_restore_kernel", "evovit_restore",
                             ("x", "tokens", "moved", "idx", "out", "N", "C", "K"),
                             {"x": "T", "tokens": "T", "moved": "T", "idx": "i64", "out": "T"}),
    "tome_merge": Kernel("tome_merge_kernel", "tome_merge",
                         ("x", "size", "metric", "tokens", "size_out", "src", "dst", "N", "C", "Cm", "r"),
                         {"x": "T", "size": "fp32", "metric": "T", "tokens": "T", "size_out": "fp32",
                          "src": "i64", "dst": "i64"}),
    "diffrate_reduce": Kernel("diffrate_reduce_kernel", "diffrate_reduce",
                              ("x", "size", "score", "tokens", "size_out", "idx", "dst", "N", "C", "keep", "merge"),
                              {"x": "T", "size": "fp32", "score": "fp32", "tokens": "T", "size_out": "fp32",
                               "idx": "i64", "dst": "i64"}),
    # in kernels/hilo_attention.py; its BLOCK covers the head dim (windows of up to 8x8 fill a HILO_ROWS tile)
    "hilo_attention": Kernel("hilo_attention_kernel", "hilo_attention",
                             ("qkv", "pad", "out", "H", "W", "S", "HEADS", "HD", "WINDOWS"),
                             {"qkv": "T", "pad": "T", "out": "T"}),
}

RESTORE_BLOCK_C = 64  # restore's grid is (B, ceil(C / 64))


def block_for(need: int) -> int:
    """The smallest power of two >= need (at least MIN_BLOCK)."""
    block = MIN_BLOCK
    while block < need:
        block *= 2
    return block


def constexprs(op: str, block: int) -> dict[str, int]:
    """The constexpr arguments of `op`'s kernel for block `block`."""
    tile = max(16, min(64, 4096 // block))
    if op in ("topk_prune", "evovit_select"):
        return {"BLOCK_N": block, "BLOCK_C": tile, "BLOCK_J": BLOCK_J}
    if op == "evovit_restore":
        return {"BLOCK_K": block, "BLOCK_R": 16, "BLOCK_C": RESTORE_BLOCK_C}
    if op == "tome_merge":
        return {"BLOCK_A": block, "BLOCK_C": tile, "BLOCK_S": 16}
    if op == "diffrate_reduce":
        return {"BLOCK_N": block, "BLOCK_T": TAIL_BLOCK, "BLOCK_C": tile, "BLOCK_J": BLOCK_J}
    if op == "hilo_attention":
        return {"BLOCK_M": HILO_ROWS, "BLOCK_D": block}
    raise KeyError(op)


def aot_blocks(op: str, blocks=AOT_BLOCKS) -> tuple[int, ...]:
    """The blocks compiled ahead of time: ToMe stops at 128 (its [BLOCK, BLOCK] fp32 matrices at 256
    would spill), HiLo's head dim at 128, the others at 256."""
    return tuple(b for b in blocks if op not in ("tome_merge", "hilo_attention") or b <= 128)


def num_warps(op: str, block: int) -> int:
    """8 warps where [BLOCK, BLOCK] fp32 matrices live (ToMe at 128+) or the tiles are largest, else 4."""
    return 8 if block >= 128 else 4


def need(op: str, N: int, K: int = 0) -> int:
    """What `op`'s block must cover: patches (N - 1), kept slots K (restore) or ceil(N / 2) (ToMe);
    (hilo_attention's is its head dim: kernels/hilo_attention.py)."""
    if op == "evovit_restore":
        return K
    if op == "tome_merge":
        return (N + 1) // 2
    return N - 1
