# SPDX-License-Identifier: Apache-2.0
"""exporter.ops.cubin reads compiled kernels without a GPU: a known copy kernel and a library variant,
compiled for sm_90 in fresh compiled-mode processes (Triton's mode is fixed per process)."""
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import pytest

from exporter.ops import aot, cubin


def _spawned(fn, *args):
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=aot._compiled_mode) as pool:
        return pool.submit(fn, *args).result()


def _copy(aligned):
    import cubin_kernels

    return cubin_kernels.compile_copy(aligned)


@pytest.fixture(scope="module")
def copies():
    return {aligned: cubin.variant(_spawned(_copy, aligned)) for aligned in (True, False)}


def test_copy_kernel_facts(copies):
    aligned, scalar = copies[True].facts, copies[False].facts
    assert aligned.name == "copy_rows" and aligned.arch.startswith("sm_90")
    # 1024 fp16 per row over 128 threads: eight a thread, one 16-byte load and store where the pointers and
    # C are known divisible by 16 (the JIT's hints), eight 16-bit ones without
    assert aligned.global_loads(128) == aligned.global_stores(128) == 1 and aligned.global_loads(16) == 0
    assert scalar.global_loads(128) == scalar.global_stores(128) == 0
    assert scalar.global_loads(16) == scalar.global_stores(16) == 8
    assert aligned.summary()["ldg128"] == 1 and scalar.summary()["ldg_scalar"] == 8
    for f in (aligned, scalar):
        assert 0 < f.registers <= 255 and f.stack == 0 and f.spill_stores == f.spill_loads == 0
        assert f.tensor_core == 0 and f.opcodes["EXIT"] >= 1
        assert f.instructions == len(f.issued) < len(f.sass)  # the NOP padding is not counted
    assert set(aligned.summary()) >= {"registers", "stack", "spill_stores", "ldg128", "tensor_core", "instructions"}


def test_occupancy_and_waves(copies):
    v = copies[True]
    occ = cubin.occupancy(v)
    assert v.facts.registers <= 16 and v.warps == 4
    assert occ.blocks_per_sm == 16 and occ.limited_by == "warps"  # 4 warps of 64 on sm_90; few registers
    assert cubin.occupancy(v, 87).blocks_per_sm == 12  # 48 warps on Orin
    assert occ.waves(132 * 16, 132) == 1 and occ.waves(132 * 16 + 1, 132) == 2
    # the same facts at 255 registers and 8 warps: one block per SM (64K registers), as the issue measured
    heavy = cubin.Variant(v.key, 8, 2048, cubin.KernelFacts("k", "sm_90a", 255, 0, 0, 1024, ()))
    assert cubin.occupancy(heavy).blocks_per_sm == 1 and cubin.occupancy(heavy).limited_by == "registers"
    assert cubin.occupancy(cubin.Variant(v.key, 8, 2048, cubin.KernelFacts("k", "sm_90a", 128, 0, 0, 1024, ()))).blocks_per_sm == 2
    # shared memory bound: 100 KB dynamic + 1 KB reserved per block leaves two of 228 KB on sm_90, one on sm_87
    big = cubin.Variant(v.key, 4, 100 * 1024, cubin.KernelFacts("k", "sm_90a", 32, 0, 0, 1024, ()))
    assert cubin.occupancy(big).blocks_per_sm == 2 and cubin.occupancy(big, 87).blocks_per_sm == 1
    with pytest.raises(ValueError, match="shared memory"):
        cubin.occupancy(cubin.Variant(v.key, 4, 200 * 1024, v.facts), 87)


def test_library_variant_compiles_and_reads():
    (v,) = cubin.compile_variants([aot.variant_keys([90])[0]], jobs=1)
    assert v.arch == 90 and v.warps >= 1 and v.facts.instructions > 50
    assert v.facts.name in cubin.read(aot.compile_all([v.key], jobs=1)[0]["cubin"])


def test_reads_a_path_and_rejects_garbage(tmp_path, copies):
    path = tmp_path / "k.cubin"
    path.write_bytes(_spawned(_copy, True)["cubin"])
    assert cubin.read(path)["copy_rows"].registers == copies[True].facts.registers
    with pytest.raises(RuntimeError, match="cuobjdump failed"):
        cubin.read(b"not a cubin")
    with pytest.raises(FileNotFoundError):
        cubin.read(tmp_path / "missing.cubin")
