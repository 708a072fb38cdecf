"""PyTorch throughput of every token-reduction method against the dense model on an NVIDIA GPU.

    python benchmarks/gpu_torch_bench.py [--model deit_small_patch16_224] [--batch 64,256] [--precision fp16]
                                         [--eager] [--rounds 9] [--iterations 30]

This is the PyTorch reference that engines are compared against, measured on the GPU the engines target.
By default every model is captured once as a CUDA graph and replayed. The times are then GPU time without
Python's kernel-launch overhead, which an engine avoids too. `--eager` times plain module calls instead,
which is what the papers' throughput numbers measured.

Every method runs at its default parameters (`exporter bench`'s `candidates`), with random weights: with
static token counts, speed does not depend on the weights. Models take turns round by round with the same
input (`interleaved`), and each speedup is the median of its per-round ratios. FLOPs are torch's
FlopCounterMode count (`count_gmacs`).
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from exporter.bench.throughput import candidates, interleaved, local, selected_methods, table  # noqa: E402
from exporter.models import create_model, input_size  # noqa: E402

DTYPES = {"fp16": torch.float16, "fp32": torch.float32}


def graphed(model: torch.nn.Module, x: torch.Tensor):
    """`model(x)` captured as a CUDA graph (after warm-up on a side stream, as torch.cuda.graphs requires);
    returns its replay."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            model(x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        model(x)
    return graph.replay


def synced(fn):
    """`fn` followed by a device synchronisation, so a host timer measures the GPU's work."""

    def call():
        fn()
        torch.cuda.synchronize()

    return call


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="deit_small_patch16_224")
    ap.add_argument("--methods", default=None, help="comma-separated (default: all, dense first)")
    ap.add_argument("--batch", default="64,256", help="comma-separated batch sizes (default %(default)s)")
    ap.add_argument("--precision", choices=sorted(DTYPES), default="fp16")
    ap.add_argument("--eager", action="store_true", help="time module calls instead of CUDA-graph replays")
    ap.add_argument("--rounds", type=int, default=9, help="interleaved rounds; medians are reported (default %(default)s)")
    ap.add_argument("--iterations", type=int, default=30, help="batches per model per round (default %(default)s)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print(
            "No CUDA GPU is visible to PyTorch, so there is nothing to measure here.\n"
            "Run this on the target GPU machine; `python -m exporter bench` measures onnxruntime on the CPU.",
            file=sys.stderr,
        )
        return 2

    torch.backends.cudnn.benchmark = True  # as timm's benchmark.py: the patch-embedding conv gets a fast algorithm
    dense = create_model(args.model, "random", 0)
    size = input_size(dense)
    cands = candidates(dense, selected_methods(args.methods), size)  # FLOPs counted on the CPU, before the move
    dense.to("cuda", DTYPES[args.precision])  # the reduced models share its modules
    mode = "eager" if args.eager else "CUDA graph"
    print(f"{args.model}, {args.precision}, {mode}, {torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"medians of {args.rounds} rounds x {args.iterations} batches")
    with torch.no_grad():
        for batch in (int(b) for b in args.batch.split(",")):
            x = torch.randn(batch, 3, *size, device="cuda", dtype=DTYPES[args.precision])
            timers = {i: local(synced((lambda m=c.model: m(x)) if args.eager else graphed(c.model, x)))
                      for i, c in enumerate(cands)}
            times = interleaved(timers, args.rounds, args.iterations, log=lambda _: None)
            for i, c in enumerate(cands):
                c.torch_ms = times[i]
            print(f"\nbatch {batch}\n")
            print(table(cands, batch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
