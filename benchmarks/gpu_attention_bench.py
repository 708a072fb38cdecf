# SPDX-License-Identifier: Apache-2.0
"""ToMe's and DiffRate's attention on a GPU: the fused biased attention kernel (`exporter.ops.biased_attention`)
beside `scaled_dot_product_attention` with the log-size bias as a [B, 1, 1, N] mask (PyTorch's memory-efficient
backend: its flash backend takes no mask) and SDPA without a bias (flash: what attention costs with nothing to add).

    python benchmarks/gpu_attention_bench.py [--batch 64,256] [--tokens 197,99] [--heads 6] [--head-dim 64]
                                             [--rounds 5] [--iterations 30]

First, the kernel is checked against the attention with the mask in float64 (`biased_attention.error_bound`,
the bound the CPU tests hold it to) in fp16, bf16 and fp32 at the first batch size's shapes, with log token
sizes, equal biases and keys at -1e4; a mismatch fails the run (exit 1) before anything is timed. Then, per
batch size and token count (DeiT-S: 6 heads of 64; 197 tokens, and 99, about what ToMe's r = 13 leaves after
a few blocks), fp16 q/k/v as strided views of one qkv projection, as the model has them, each variant captured
as a CUDA graph and replayed back to back (CUDA events), alternating round by round; medians. About 10-20 s on
an H100, most of it Triton's compilation.
"""
from __future__ import annotations

import argparse
import statistics
import sys

import torch

from exporter import ops
from exporter.bench.cuda import graphed, timed
from exporter.ops.kernels.biased_attention import error_bound


def qkv_views(batch: int, tokens: int, heads: int, head_dim: int, dtype, seed: int = 0):
    """q, k, v [B, H, N, d] as strided views of one [B, N, 3, H, d] projection, and log token sizes [B, N]."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    qkv = (torch.randn(batch, tokens, 3, heads, head_dim, generator=g, device="cuda") * 2).to(dtype)
    sizes = torch.randint(1, 30, (batch, tokens), generator=g, device="cuda").float()
    return (*qkv.permute(2, 0, 3, 1, 4).unbind(0), sizes.log())


def check(batch: int, tokens: int, heads: int, head_dim: int) -> list[str]:
    """Why the kernel is off the float64 attention with the mask (empty when it is within its bound)."""
    failures = []
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        q, k, v, bias = qkv_views(batch, tokens, heads, head_dim, dtype)
        for kind, b in (("log sizes", bias), ("equal", torch.full_like(bias, 2.0)),
                        ("-1e4 on every third key", bias.index_fill(1, torch.arange(1, tokens, 3, device="cuda"), -1e4))):
            with torch.no_grad():
                got = torch.ops.exporter.biased_attention(q, k, v, b)
                again = torch.ops.exporter.biased_attention(q, k, v, b)
                routed = ops.biased_attention(q, k, v, b)  # what attend() runs: the kernel, not SDPA
                bound, exact = error_bound(q, k, v, b)
            err = (got.double() - exact).abs().max().item()
            same, used = torch.equal(got, again), torch.equal(got, routed)
            ok = got.dtype == dtype and got.shape == q.shape and err <= bound and same and used
            print(f"check {str(dtype).removeprefix('torch.')} {kind}: max |error| {err:.3g}, bound {bound:.3g}"
                  f"{'' if same else ', NOT DETERMINISTIC'}{'' if used else ', NOT WHAT ops.biased_attention RUNS'}"
                  f"{'' if ok else '  **MISMATCH**'}", flush=True)
            if not ok:
                failures.append(f"{dtype} {kind}: error {err:.3g} (bound {bound:.3g}), deterministic {same}, "
                                f"taken by ops.biased_attention {used}")
    return failures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", default="64,256")
    ap.add_argument("--tokens", default="197,99")
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iterations", type=int, default=30)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("No CUDA GPU is visible to PyTorch: run this on the GPU machine.", file=sys.stderr)
        return 2
    from torch.nn.attention import SDPBackend, sdpa_kernel

    batches, token_counts = [int(b) for b in args.batch.split(",")], [int(n) for n in args.tokens.split(",")]
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; {args.heads} heads of {args.head_dim}", flush=True)
    failures = check(batches[0], token_counts[0], args.heads, args.head_dim)
    if failures:
        print("\nTHE FUSED ATTENTION DIFFERS FROM THE ATTENTION WITH THE MASK:\n" + "\n".join(failures), flush=True)
        return 1
    attend = torch.nn.functional.scaled_dot_product_attention
    print(f"\nfp16, CUDA graphs, medians of {args.rounds} rounds of {args.iterations}\n"
          "| batch | tokens | fused, bias µs | SDPA + mask (mem-efficient) µs | SDPA, no bias (flash) µs | "
          "fused vs mask | fused vs flash |\n|---|---|---|---|---|---|---|", flush=True)
    for batch in batches:
        for tokens in token_counts:
            q, k, v, bias = qkv_views(batch, tokens, args.heads, args.head_dim, torch.float16)
            mask = bias[:, None, None, :].to(q.dtype)

            def masked(_):
                with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION):
                    return attend(q, k, v, attn_mask=mask)

            def flash(_):
                with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                    return attend(q, k, v)

            with torch.no_grad():
                replays = {"fused": graphed(lambda _: torch.ops.exporter.biased_attention(q, k, v, bias), None),
                           "masked": graphed(masked, None), "flash": graphed(flash, None)}
            times = {name: [] for name in replays}
            for _ in range(args.rounds):
                for name, replay in replays.items():
                    times[name].append(timed(replay, args.iterations))
            us = {name: statistics.median(t) for name, t in times.items()}
            print(f"| {batch} | {tokens} | {us['fused']:.1f} | {us['masked']:.1f} | {us['flash']:.1f} | "
                  f"{us['masked'] / us['fused']:.2f}x | {us['flash'] / us['fused']:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
