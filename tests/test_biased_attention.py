# SPDX-License-Identifier: Apache-2.0
"""The biased attention kernel (`exporter.ops.kernels.biased_attention`: flash-style attention with a per-key
additive bias, what ToMe's and DiffRate's proportional attention runs on a GPU) against
`scaled_dot_product_attention` with the bias as a [B, 1, 1, N] mask in float64, in Triton's interpreter; and
`ops.biased_attention`, which takes it only for CUDA tensors (the CPU and every exported graph keep the mask).

Tolerance: `error_bound`, from the dtypes' roundings (its docstring derives it).
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from exporter import ops

ROOT = Path(__file__).resolve().parent.parent

CASES = [
    # batch, heads, tokens, head dim, dtype, bias
    (2, 2, 197, 64, "float32", "sizes"),      # DeiT-S head, ToMe's sizes after a merge
    (2, 2, 197, 64, "float16", "sizes"),
    (3, 1, 2, 16, "float16", "sizes"),        # the fewest tokens
    (2, 2, 257, 32, "float32", "sizes"),      # one key past a tile: a tail of one
    (1, 2, 577, 64, "float16", "sizes"),      # ViT-B/16 at 384 px
    (2, 1, 101, 24, "float32", "sizes"),      # odd N, head dim not a power of two
    (1, 1, 1025, 16, "float16", "sizes"),     # ViT-L/14 at 448 px
    (2, 2, 197, 64, "float16", "equal"),      # every key the same bias: the softmax without it
    (2, 1, 197, 64, "float32", "equal_large"),  # every key -1e4: logits far from 0, the same softmax
    (2, 1, 197, 64, "float16", "negative"),   # a third of the keys at -1e4 and -1e30: weightless
    (2, 2, 129, 32, "float32", "masked_first"),  # the first 64 keys -inf: rows start with no key at all
    (3, 2, 70, 64, "float16", "masked_first"),
]

# Runs in a fresh interpreter with TRITON_INTERPRET=1 set before triton is imported (the interpreter needs
# triton.language's own jit functions interpreted, whatever other tests imported in this process).
_CHECKS = textwrap.dedent("""
    import json, sys, torch
    from exporter.ops.kernels.biased_attention import biased_attention, error_bound
    out = []
    for b, h, n, d, dtype, kind in json.loads(sys.argv[1]):
        g = torch.Generator().manual_seed(b * 10000 + n * 10 + d)
        # strided q/k/v views of one [B, N, 3, H, d] projection, as timm's attention has them; x2: a peaked softmax
        qkv = (torch.randn(b, n, 3, h, d, generator=g) * 2).to(getattr(torch, dtype)).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        bias = torch.randint(1, 30, (b, n), generator=g).float().log()  # log token sizes
        if kind == "equal":
            bias = torch.full((b, n), 2.0)
        elif kind == "equal_large":
            bias = torch.full((b, n), -1.0e4)
        elif kind == "negative":
            bias[:, 1::3] = -1.0e4
            bias[:, 2::6] = -1.0e30
        elif kind == "masked_first":
            bias[:, :64] = float("-inf")
        got = biased_attention(q, k, v, bias)
        bound, exact = error_bound(q, k, v, bias)
        again = biased_attention(q, k, v, bias)
        out.append({"shape": list(got.shape) == [b, h, n, d], "dtype": got.dtype == q.dtype,
                    "deterministic": torch.equal(got, again), "finite": bool(got.isfinite().all()),
                    "err": (got.double() - exact).abs().max().item(), "bound": bound})
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def results():
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", _CHECKS, json.dumps(CASES)], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # ~40 s: the interpreter runs every tile op in numpy, as tests/test_kernels.py
@pytest.mark.parametrize("case", range(len(CASES)), ids=["-".join(map(str, c)) for c in CASES])
def test_kernel_matches_attention_with_the_mask(results, case):
    r = results[case]
    assert r["shape"] and r["dtype"] and r["finite"] and r["deterministic"], r
    assert r["err"] <= r["bound"], r


def test_cpu_and_exported_graphs_keep_the_mask():
    """On the CPU the attention is today's: SDPA with the bias as a [B, 1, 1, N] mask in q's dtype, exactly."""
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(3, 2, 3, 17, 8, generator=g).unbind(0)
    bias = torch.rand(2, 17, generator=g).log1p()
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias[:, None, None, :])
    assert torch.equal(ops.biased_attention(q, k, v, bias), want)
    assert torch.equal(ops.biased_attention(q, k, v), torch.nn.functional.scaled_dot_product_attention(q, k, v))


def test_custom_op_registration():
    """torch.ops.exporter.biased_attention (the op CUDA tensors reach, for torch.compile and CUDA graphs): its shape
    function, strides and CPU implementation agree (torch.library.opcheck), in fp32 and fp16."""
    g = torch.Generator().manual_seed(1)
    for dtype in (torch.float32, torch.float16):
        qkv = torch.randn(2, 19, 3, 2, 16, generator=g).to(dtype).permute(2, 0, 3, 1, 4)
        bias = torch.rand(2, 19, generator=g).log1p()
        torch.library.opcheck(torch.ops.exporter.biased_attention.default, (*qkv.unbind(0), bias))
        out = torch.ops.exporter.biased_attention(*qkv.unbind(0), bias)
        assert out.shape == (2, 2, 19, 16) and out.dtype == dtype and out.transpose(1, 2).is_contiguous()
