"""Per-op GPU time of each fused kernel against the reference maths (the `decompose` lowering) in PyTorch.

    python benchmarks/gpu_ops_bench.py [--batch 64,256] [--precision fp16] [--rounds 7] [--iterations 50]

DeiT-S shapes (N = 197 tokens, C = 384; ToMe's metric 64 wide) at each method's usual reduction. Both
sides are captured as CUDA graphs and replayed, so the times are GPU time without Python's launch
overhead (what an engine sees); sides alternate round by round and medians are reported. Outputs are
checked against the reference once before timing. Runs in well under two minutes on an H100/H200.
"""
from __future__ import annotations

import argparse
import statistics
import sys

import torch

from exporter.ops import kernels, reference

DTYPES = {"fp16": torch.float16, "fp32": torch.float32}
N, C, CM = 197, 384, 64


def cases(batch: int, dtype: torch.dtype):
    """(label, reference call, kernel call) per op, on fixed random inputs."""
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(batch, N, C, generator=g, device="cuda").to(dtype)
    score = torch.rand(batch, N - 1, generator=g, device="cuda")
    size = 1 + torch.rand(batch, N, generator=g, device="cuda")
    metric = torch.randn(batch, N, CM, generator=g, device="cuda").to(dtype)
    keep = 98
    idx = reference.evovit_select(x, score, keep)[1]
    tokens = torch.randn(batch, keep + 2, C, generator=g, device="cuda").to(dtype)
    moved = torch.randn(batch, 1, C, generator=g, device="cuda").to(dtype)
    return [
        ("topk_prune k=137 fuse (EViT 0.7)", lambda: reference.topk_prune(x, score, 137, True),
         lambda: kernels.topk_prune(x, score, 137, True)),
        ("evovit_select keep=98", lambda: reference.evovit_select(x, score, keep),
         lambda: kernels.evovit_select(x, score, keep)),
        ("evovit_restore K=98", lambda: reference.evovit_restore(x, tokens, moved, idx),
         lambda: kernels.evovit_restore(x, tokens, moved, idx)),
        ("tome_merge r=13", lambda: reference.tome_merge(x, size, metric, 13),
         lambda: kernels.tome_merge(x, size, metric, 13)),
        ("diffrate_reduce keep=180 merge=170", lambda: reference.diffrate_reduce(x, size, score, 180, 170),
         lambda: kernels.diffrate_reduce(x, size, score, 180, 170)),
    ]


def graphed(fn):
    """`fn` captured as a CUDA graph (after warm-up on a side stream); returns its replay."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def timed(replay, iterations: int) -> float:
    """Microseconds per replay over `iterations` back-to-back replays (CUDA events)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iterations):
        replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1000 / iterations


def agree(ref_out, ker_out) -> bool:
    """Same indices and close values (fp16 rounding), or a replayed tie; a quick check, tests do the rest."""
    ref_out = ref_out if isinstance(ref_out, tuple) else (ref_out,)
    ker_out = ker_out if isinstance(ker_out, tuple) else (ker_out,)
    return all(torch.equal(a, b) if a.dtype == torch.int64 else torch.allclose(a.float(), b.float(), rtol=2e-3, atol=2e-2)
               for a, b in zip(ref_out, ker_out))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", default="64,256")
    ap.add_argument("--precision", choices=sorted(DTYPES), default="fp16")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--iterations", type=int, default=50)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("No CUDA GPU is visible to PyTorch: run this on the GPU machine.", file=sys.stderr)
        return 2
    print(f"{torch.cuda.get_device_name()}, {args.precision}, CUDA graphs, N={N} C={C}, medians of {args.rounds} rounds")
    print("\n| op | batch | reference µs | fused µs | speedup | outputs agree |\n|---|---|---|---|---|---|")
    with torch.no_grad():
        for batch in (int(b) for b in args.batch.split(",")):
            for label, ref_fn, ker_fn in cases(batch, DTYPES[args.precision]):
                ok = agree(ref_fn(), ker_fn())
                replays = {"ref": graphed(ref_fn), "ker": graphed(ker_fn)}
                times = {k: [] for k in replays}
                for _ in range(args.rounds):
                    for k, replay in replays.items():
                        times[k].append(timed(replay, args.iterations))
                ref_us, ker_us = statistics.median(times["ref"]), statistics.median(times["ker"])
                print(f"| {label} | {batch} | {ref_us:.1f} | {ker_us:.1f} | {ref_us / ker_us:.2f}x | {ok} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
