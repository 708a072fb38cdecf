# SPDX-License-Identifier: Apache-2.0
"""The fused Triton kernels against the reference maths, on the CPU through Triton's interpreter.

Triton picks interpreter or compiled mode when it is first imported. If this process imported it in
compiled mode before these tests (another test module), the `kernels` fixture runs the kernels in a
fresh interpreter-mode process (KernelWorker) instead; otherwise in this process. Shapes are small (the interpreter runs every block op in numpy) but cover the edges:
batch 1 and 3, odd and even N, C not a multiple of any tile, k / keep / r at both ends, ties.
"""
import subprocess
import sys

import pytest
import torch

import exporter.ops.kernels
from exporter.ops.kernels import config
from kernel_checks import (KernelWorker, check_diffrate_reduce, check_evovit_restore, check_evovit_select,
                           check_tome_merge, check_topk_prune)

DTYPES = [torch.float32, torch.float16]


@pytest.fixture(scope="module")
def kernels():
    if exporter.ops.kernels.triton_mode() == "jit":
        worker = KernelWorker(interpret=True)
        yield worker
        worker.close()
    else:
        yield exporter.ops.kernels


def tokens(B, N, C, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, N, C, generator=g).to(dtype)


def scores(B, n, seed=1, ties=False):
    g = torch.Generator().manual_seed(seed)
    if ties:  # four distinct values: most scores tie
        return torch.randint(0, 4, (B, n), generator=g).float() / 4
    return torch.rand(B, n, generator=g)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,N,C,k,fuse", [(1, 17, 16, 1, True), (3, 37, 70, 35, True), (3, 38, 33, 20, False),
                                          (1, 197, 40, 98, True)])
def test_topk_prune(kernels, dtype, B, N, C, k, fuse):
    check_topk_prune(kernels, tokens(B, N, C, dtype), scores(B, N - 1), k, fuse)


@pytest.mark.parametrize("dtype", DTYPES)
def test_topk_prune_ties(kernels, dtype):
    check_topk_prune(kernels, tokens(3, 29, 24, dtype), scores(3, 28, ties=True), 9, True, ties=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,N,C,keep", [(1, 17, 16, 1), (3, 37, 70, 35), (3, 30, 33, 12)])
def test_evovit_select_and_restore(kernels, dtype, B, N, C, keep):
    x = tokens(B, N, C, dtype)
    idx = check_evovit_select(kernels, x, scores(B, N - 1), keep)
    updated = tokens(B, keep + 2, C, dtype, seed=2)
    check_evovit_restore(kernels, x, updated, tokens(B, 1, C, dtype, seed=3), idx)


@pytest.mark.parametrize("dtype", DTYPES)
def test_evovit_select_ties(kernels, dtype):
    check_evovit_select(kernels, tokens(3, 29, 24, dtype), scores(3, 28, ties=True), 7, ties=True)


def test_ties_go_to_the_lower_position(kernels):
    """The kernels' own tie rule (deterministic, the same in every build): equal scores rank by position."""
    x = tokens(2, 21, 16, torch.float32)
    _, idx = kernels.topk_prune(x, torch.full((2, 20), 0.5), 6, False)
    assert idx.tolist() == [list(range(6))] * 2
    _, _, src, _ = kernels.tome_merge(x, torch.ones(2, 21), torch.ones(2, 21, 16), 4)  # every match equal
    assert src.tolist() == [[1, 2, 3, 4]] * 2


def test_evovit_select_zero_weights(kernels):
    """All placeholders' g underflow to 0: the reference's clamp gives rep = 0, not NaN."""
    g = torch.zeros(1, 20)
    g[0, :5] = 1.0
    tokens_, _ = kernels.evovit_select(tokens(1, 21, 16, torch.float32), g, 5)
    assert torch.equal(tokens_[0, -1], torch.zeros(16))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,N,C,Cm,r", [(1, 17, 16, 16, 1), (3, 37, 70, 24, 18), (3, 38, 33, 40, 18),
                                        (1, 197, 40, 64, 98)])
def test_tome_merge(kernels, dtype, B, N, C, Cm, r):
    x = tokens(B, N, C, dtype)
    size = 1.0 + torch.rand(B, N, generator=torch.Generator().manual_seed(4)) * 3
    check_tome_merge(kernels, x, size, tokens(B, N, Cm, dtype, seed=5), r)


@pytest.mark.parametrize("dtype", DTYPES)
def test_tome_merge_duplicates(kernels, dtype):
    """Duplicate metric rows: many A tokens match several B tokens equally well, and equally well as each other."""
    metric = tokens(3, 9, 16, dtype, seed=6).repeat(1, 4, 1)[:, :33]
    check_tome_merge(kernels, tokens(3, 33, 20, dtype), torch.ones(3, 33), metric, 16, ties=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,N,C,keep,merge", [(1, 17, 16, 17, 16), (3, 37, 70, 3, 2), (3, 50, 33, 45, 5),
                                              (1, 197, 40, 180, 150)])
def test_diffrate_reduce(kernels, dtype, B, N, C, keep, merge):
    x = tokens(B, N, C, dtype)
    size = 1.0 + torch.rand(B, N, generator=torch.Generator().manual_seed(4)) * 3
    check_diffrate_reduce(kernels, x, size, scores(B, N - 1), keep, merge)


@pytest.mark.parametrize("dtype", DTYPES)
def test_diffrate_reduce_ties(kernels, dtype):
    x = tokens(3, 8, 24, dtype, seed=7).repeat(1, 5, 1)[:, :37]  # duplicate tokens: equal similarities
    check_diffrate_reduce(kernels, x, torch.ones(3, 37), scores(3, 36, ties=True), 30, 6, ties=True)


def test_rejects_bad_arguments(kernels):
    x = tokens(2, 10, 8, torch.float32)
    with pytest.raises(ValueError):
        kernels.topk_prune(x, scores(2, 9), 9, False)  # k must leave a patch out
    with pytest.raises(ValueError):
        kernels.tome_merge(x, torch.ones(2, 10), x, 5)  # r > (N - 1) // 2
    with pytest.raises(ValueError):
        kernels.diffrate_reduce(x, torch.ones(2, 10), scores(2, 9), 5, 5)  # merge < keep


def near_ties(B, n, seed=8):
    """Distinct scores one fp32 ulp apart (0.5 + j * 2**-24, shuffled): the reference's order is the only one."""
    g = torch.Generator().manual_seed(seed)
    return 0.5 + torch.stack([torch.randperm(n, generator=g) for _ in range(B)]).float() * 2.0**-24


TOKEN_COUNTS = [3, 197, 257, 577, 1025]  # the fewest every op allows, DeiT, 16x16 + 1, ViT-B/16 at 384, 32x32 + 1


@pytest.mark.parametrize("N", TOKEN_COUNTS)
def test_selections_any_token_count(kernels, N):
    """No block ceiling: near-ties decided as the reference, exact ties to the lower position, restore exact."""
    k = max(1, (N - 1) // 3)
    dtype = torch.float16 if N % 2 else torch.float32
    x = tokens(2, N, 24, dtype, seed=N)
    check_topk_prune(kernels, x, near_ties(2, N - 1), k, True)
    check_topk_prune(kernels, x, scores(2, N - 1, ties=True), N - 2, False, ties=True)
    idx = check_evovit_select(kernels, x, near_ties(2, N - 1, seed=9), k)
    check_evovit_restore(kernels, x, tokens(2, k + 2, 24, dtype, seed=2), tokens(2, 1, 24, dtype, seed=3), idx)
    check_evovit_select(kernels, x, scores(2, N - 1, ties=True), k, ties=True)


@pytest.mark.parametrize("N", TOKEN_COUNTS)
def test_tome_merge_any_token_count(kernels, N):
    size = 1.0 + torch.rand(2, N, generator=torch.Generator().manual_seed(4)) * 3
    x = tokens(2, N, 40, torch.float16, seed=N)
    check_tome_merge(kernels, x, size, tokens(2, N, 24, torch.float32, seed=5), (N - 1) // 2)
    metric = tokens(2, 7, 16, torch.float16, seed=6).repeat(1, -(-N // 7), 1)[:, :N]  # duplicates: ties everywhere
    check_tome_merge(kernels, x.float(), size, metric, max(1, N // 4), ties=True)


@pytest.mark.parametrize("N", TOKEN_COUNTS)
def test_diffrate_reduce_any_token_count(kernels, N):
    size = 1.0 + torch.rand(2, N, generator=torch.Generator().manual_seed(4)) * 3
    keep = N - N // 8
    merge = max(2, keep // 3)
    check_diffrate_reduce(kernels, tokens(2, N, 40, torch.float32, seed=N), size, near_ties(2, N - 1), keep, merge)
    x = tokens(2, 5, 24, torch.float16, seed=7).repeat(1, -(-N // 5), 1)[:, :N]  # duplicates: equal similarities
    check_diffrate_reduce(kernels, x, size, scores(2, N - 1, ties=True), keep, merge, ties=True)


def test_variants():
    """Every op's kernels, decision first; each variant listed once; no token count needs its own."""
    assert config.OPS["tome_merge"] == ("tome_decide_kernel", "combine_kernel")
    assert [config.KERNELS[k].role for k in config.OPS["diffrate_reduce"]] == ["decide", "move"]
    assert config.variants("topk_prune", 3) == config.variants("topk_prune", 1025)
    assert {(v.dtype, v.aligned) for v in config.variants("tome_merge") if v.kernel == "combine_kernel"} == {
        ("fp32", False), ("fp32", True), ("fp16", False), ("fp16", True)}
    assert [v.dtype for v in config.variants("topk_prune") if v.kernel == "select_decide_kernel"] == [None]
    assert {(v.dtype, v.aligned) for v in config.variants("hilo_attention", 3137)} == {  # any head dim too
        ("fp32", False), ("fp32", True), ("fp16", False), ("fp16", True)}
    everything = config.all_variants()
    assert len(everything) == len(set(everything)) and set(everything) == {
        v for op in config.OPS for v in config.variants(op)}


def test_import_needs_no_triton():
    """Importing the kernels (what the custom ops do on a CPU-only install) does not import triton."""
    code = "import sys, exporter.ops.kernels; assert 'triton' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
