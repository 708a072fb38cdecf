# SPDX-License-Identifier: Apache-2.0
"""The targets of issue 20 on the shipped library's own cubins (every variant `aot.variant_keys` lists for
sm_87 and sm_90, fp16 and fp32, compiled as `build --plugins` compiles them), read without a GPU:

- no stack frame (no spills, no local arrays) and at most 128 registers a thread (two 256-thread blocks an SM);
- the movement kernels' fp16 variants specialised for 16-byte alignment load 128 bits a thread.

The kernels of main before issue 20's rewrite fail these; this file is merged with that rewrite.
"""
import pytest

from exporter.ops import aot, cubin
from exporter.ops.kernels import config

ARCHS = (87, 90)
MAX_REGISTERS = 128


@pytest.fixture(scope="module")
def library():
    keys = aot.variant_keys(ARCHS)
    return cubin.compile_variants(keys)


def _kernel(v: cubin.Variant) -> config.Kernel:
    """The table's entry for a compiled variant (found by its function name)."""
    return next(k for k in config.KERNELS.values() if k.name == v.facts.name)


def _label(v: cubin.Variant) -> str:
    return f"{v.facts.name} {v.meta.get('dtype')} {v.facts.arch} {v.key}"


def test_library_covers_both_archs_and_dtypes(library):
    assert {v.arch for v in library} == set(ARCHS)
    assert {v.meta.get("dtype") for v in library} >= {"fp16", "fp32"}
    assert {v.facts.name for v in library} == {k.name for k in config.KERNELS.values()}


def test_no_stack_frame_and_at_most_128_registers(library):
    bad = [f"{_label(v)}: {v.facts.registers} registers, {v.facts.stack} B stack, "
           f"{v.facts.spill_stores} STL / {v.facts.spill_loads} LDL"
           for v in library if v.facts.stack or v.facts.local or v.facts.registers > MAX_REGISTERS]
    assert not bad, f"{len(bad)} of {len(library)} variants miss the target:\n" + "\n".join(bad)


def test_fp16_movement_kernels_load_128_bits(library):
    # the table marks movement kernels (Kernel.role == "move"); compile_variant's result says which variant
    # takes its pointers and C as 16-byte aligned ("aligned"); the generic fallback may load narrower
    moving = [v for v in library if getattr(_kernel(v), "role", None) == "move" and v.meta.get("dtype") == "fp16"
              and v.meta.get("aligned")]
    assert moving, ("no aligned fp16 movement variant in the library: config.KERNELS marks them role='move' and "
                    "aot.compile_variant's result carries 'aligned'")
    narrow = [f"{_label(v)}: {v.facts.global_loads(128)} LDG.128, {sum(v.facts.global_loads(b) for b in (16, 32, 64))} "
              f"narrower" for v in moving if v.facts.global_loads(128) == 0]
    assert not narrow, "\n".join(narrow)


# ---- the biased attention kernel (ToMe's and DiffRate's attention on a GPU; JIT-compiled, not in the library) ----
ATTENTION = [(dtype, head_dim) for dtype in ("float16", "float32") for head_dim in (32, 64, 128)] + [("bfloat16", 64)]


def _compile_attention(dtype: str, head_dim: int, arch: int) -> dict:
    import torch

    from exporter.ops.kernels.biased_attention import compile_cubin

    return compile_cubin(getattr(torch, dtype), head_dim, arch)


def test_biased_attention_no_stack_frame_and_at_most_128_registers():
    """The kernel as the JIT compiles it at DeiT-like shapes, for the head dims it takes (its tiles shrink past 64)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    keys = [(dtype, head_dim, arch) for arch in ARCHS for dtype, head_dim in ATTENTION]
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"), initializer=aot._compiled_mode) as pool:
        compiled = [cubin.variant(c, k) for k, c in zip(keys, pool.map(_compile_attention, *zip(*keys)))]
    bad = [f"{v.key}: {v.facts.registers} registers, {v.facts.stack} B stack" for v in compiled
           if v.facts.stack or v.facts.local or v.facts.registers > MAX_REGISTERS]
    assert not bad, "\n".join(bad)
    # half precision runs its two products on the tensor cores (mma on sm_87, wgmma on sm_90)
    assert all(v.facts.tensor_core for v in compiled if v.key[0] != "float32")
