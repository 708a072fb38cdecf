# SPDX-License-Identifier: Apache-2.0
"""A tiny Triton kernel compiled for sm_90 by tests/test_cubin.py (in a fresh compiled-mode process):
one row copy, with and without the JIT's divisibility hints, so the reader's 128-bit count is checked on
code whose loads are known."""
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource


@triton.jit
def copy_rows(src, dst, C, BLOCK_C: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK_C)
    mask = cols < C
    tl.store(dst + row * C + cols, tl.load(src + row * C + cols, mask=mask), mask=mask)


def compile_copy(aligned: bool, arch: int = 90) -> dict:
    """What aot.compile_variant returns, for copy_rows on fp16 (16-byte aligned rows when `aligned`)."""
    attrs = {(i,): [["tt.divisibility", 16]] for i in range(3)} if aligned else {}
    compiled = triton.compile(ASTSource(copy_rows, {"src": "*fp16", "dst": "*fp16", "C": "i32", "BLOCK_C": "constexpr"},
                                       {"BLOCK_C": 1024}, attrs), target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": 4})
    md = compiled.metadata
    return {"name": md.name, "warps": md.num_warps, "shared": md.shared, "cubin": compiled.asm["cubin"]}
