# SPDX-License-Identifier: Apache-2.0
"""The kernels on a CUDA GPU: the Triton JIT kernels, then the AOT library's C launchers (via ctypes), both
against the reference with the checks of tests/kernel_checks.py. Skipped without CUDA.

The AOT library is built for the current GPU's compute capability only, every variant, and called on
torch CUDA tensors on torch's current stream with the workspace its `_workspace` function asks for, so it
runs exactly as a plugin's enqueue() would. Shapes cover both the aligned variants (C % 16 == 0, 16-byte
aligned tensors) and the generic ones (C = 70, and tensors one element past an aligned address).
"""
import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import exporter.ops.kernels
from exporter.ops import aot
from kernel_checks import (KernelWorker, check_diffrate_reduce, check_evovit_restore, check_evovit_select,
                           check_tome_merge, check_topk_prune)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

ROOT = Path(__file__).resolve().parents[1]
DTYPES = [torch.float32, torch.float16]
# (B, N, C): batch 1 and odd, N odd/even from 17 to ViT-B/16 at 384 px (577), C not a multiple of 16 or a tile
SHAPES = [(1, 17, 16), (3, 38, 70), (64, 197, 384), (2, 577, 768)]


def rand(*shape, dtype=torch.float32, seed=0, offset=0):
    """Normal values; with offset, a view starting `offset` elements into its storage (misaligned pointers)."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    flat = torch.randn(offset + torch.Size(shape).numel(), generator=g, device="cuda").to(dtype)
    return flat[offset:].view(*shape)


def uniform(*shape, seed=1):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return torch.rand(*shape, generator=g, device="cuda")


class AotKernels:
    """The AOT launchers behind `exporter.ops.kernels`' Python signatures (outputs allocated with torch)."""

    def __init__(self, lib: ctypes.CDLL):
        self.lib = lib

    def _call(self, name, *args):
        """`name`(stream, *args, workspace): ints first (dtype, B, N, ... = the `_workspace` function's
        arguments), then tensors; the workspace allocated as `<name>_workspace` says."""
        sizes = [a for a in args if not isinstance(a, torch.Tensor)]
        query = getattr(self.lib, name + "_workspace")
        query.restype = ctypes.c_size_t
        workspace = torch.empty(query(*map(ctypes.c_int, sizes)), dtype=torch.uint8, device="cuda")
        fn = getattr(self.lib, name)
        fn.restype = ctypes.c_int
        stream = ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)
        conv = [ctypes.c_void_p(a.data_ptr()) if isinstance(a, torch.Tensor) else ctypes.c_int(a) for a in args]
        rc = fn(stream, *conv, ctypes.c_void_p(workspace.data_ptr() if workspace.numel() else None))
        assert rc == 0, f"{name} returned CUresult {rc}"
        torch.cuda.synchronize()

    @staticmethod
    def _dtype(x):
        return {torch.float32: 0, torch.float16: 1}[x.dtype]

    def topk_prune(self, x, score, k, fuse):
        B, N, C = x.shape
        tokens, idx = x.new_empty(B, 1 + k + int(fuse), C), torch.empty(B, k, dtype=torch.int64, device="cuda")
        self._call("exporter_topk_prune", self._dtype(x), B, N, C, k, int(fuse), x, score, tokens, idx)
        return tokens, idx

    def evovit_select(self, x, g, keep):
        B, N, C = x.shape
        tokens, idx = x.new_empty(B, keep + 2, C), torch.empty(B, keep, dtype=torch.int64, device="cuda")
        self._call("exporter_evovit_select", self._dtype(x), B, N, C, keep, x, g, tokens, idx)
        return tokens, idx

    def evovit_restore(self, x, tokens, moved, idx):
        B, N, C = x.shape
        out = torch.empty_like(x)
        self._call("exporter_evovit_restore", self._dtype(x), B, N, C, idx.shape[1], x, tokens, moved, idx, out)
        return out

    def tome_merge(self, x, size, metric, r):
        B, N, C = x.shape
        tokens, size_out = x.new_empty(B, N - r, C), torch.empty(B, N - r, device="cuda")
        src, dst = (torch.empty(B, r, dtype=torch.int64, device="cuda") for _ in range(2))
        self._call("exporter_tome_merge", self._dtype(x), B, N, C, metric.shape[2], r, x, size, metric, tokens,
                   size_out, src, dst)
        return tokens, size_out, src, dst

    def diffrate_reduce(self, x, size, score, keep, merge):
        B, N, C = x.shape
        tokens, size_out = x.new_empty(B, merge, C), torch.empty(B, merge, device="cuda")
        idx = torch.empty(B, keep - 1, dtype=torch.int64, device="cuda")
        dst = torch.empty(B, keep - merge, dtype=torch.int64, device="cuda")
        self._call("exporter_diffrate_reduce", self._dtype(x), B, N, C, keep, merge, x, size, score, tokens, size_out,
                   idx, dst)
        return tokens, size_out, idx, dst


@pytest.fixture(scope="module")
def aot_kernels(tmp_path_factory):
    if shutil.which("g++") is None:
        pytest.skip("needs g++")
    major, minor = torch.cuda.get_device_capability()
    out = tmp_path_factory.mktemp("aot_gpu")
    cpp = aot.build(out, [10 * major + minor])
    lib = out / "libexporter_kernels.so"
    subprocess.run(["g++", "-std=c++17", "-O2", "-fPIC", "-shared", "-I", str(ROOT / "exporter" / "plugins" / "common"), str(cpp),
                    "-o", str(lib), "-ldl"], check=True)
    return AotKernels(ctypes.CDLL(str(lib)))


@pytest.fixture(scope="module")
def jit_kernels():
    """The Triton JIT kernels: in this process unless its triton is the interpreter's (test_kernels.py ran
    first), then in a fresh compiled-mode process."""
    if exporter.ops.kernels.triton_mode() == "interpreter":
        worker = KernelWorker(interpret=False)
        yield worker
        worker.close()
    else:
        exporter.ops.kernels.topk_prune(rand(1, 17, 16), uniform(1, 16), 4, True)
        assert exporter.ops.kernels.triton_mode() == "jit", "CUDA tensors must run compiled kernels"
        yield exporter.ops.kernels


@pytest.fixture(params=["jit", "aot"])
def impl(request):
    return request.getfixturevalue("jit_kernels" if request.param == "jit" else "aot_kernels")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,N,C", SHAPES)
def test_topk_prune(impl, dtype, B, N, C):
    x, score = rand(B, N, C, dtype=dtype, offset=N % 2), uniform(B, N - 1)
    for k, fuse in [(1, True), (N - 2, True), ((N - 1) // 2, False)]:
        check_topk_prune(impl, x, score, k, fuse)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,N,C", SHAPES)
def test_evovit_select_and_restore(impl, dtype, B, N, C):
    x, g = rand(B, N, C, dtype=dtype, offset=N % 2), uniform(B, N - 1)
    for keep in (1, N - 2, N // 3):
        idx = check_evovit_select(impl, x, g, keep)
        check_evovit_restore(impl, x, rand(B, keep + 2, C, dtype=dtype, seed=2), rand(B, 1, C, dtype=dtype, seed=3), idx)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,N,C", SHAPES)
def test_tome_merge(impl, dtype, B, N, C):
    x, size = rand(B, N, C, dtype=dtype, offset=N % 2), 1.0 + 3 * uniform(B, N, seed=4)
    metric = rand(B, N, 64, dtype=dtype, seed=5)
    for r in (1, (N - 1) // 2, N // 4):
        check_tome_merge(impl, x, size, metric, r)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,N,C", SHAPES)
def test_diffrate_reduce(impl, dtype, B, N, C):
    x, size = rand(B, N, C, dtype=dtype, offset=N % 2), 1.0 + 3 * uniform(B, N, seed=4)
    score = uniform(B, N - 1)
    for keep, merge in [(N, N - 1), (3, 2), (N - 5, N // 3)]:
        check_diffrate_reduce(impl, x, size, score, keep, merge)


@pytest.mark.parametrize("dtype", DTYPES)
def test_ties(impl, dtype):
    """Equal scores and duplicate tokens: valid choices, outputs equal to the reference replayed."""
    score = (torch.randint(0, 4, (3, 36), device="cuda") / 4).float()
    x = rand(3, 8, 24, dtype=dtype, seed=7).repeat(1, 5, 1)[:, :37].contiguous()
    check_topk_prune(impl, x, score, 9, True, ties=True)
    check_evovit_select(impl, x, score, 7, ties=True)
    check_tome_merge(impl, x, torch.ones(3, 37, device="cuda"), x, 18, ties=True)
    check_diffrate_reduce(impl, x, torch.ones(3, 37, device="cuda"), score, 30, 6, ties=True)
