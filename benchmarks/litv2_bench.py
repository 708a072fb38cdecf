"""onnxruntime CPU throughput of LITv2-S next to DeiT-S and to LITv2-S without HiLo's head split.

    python benchmarks/litv2_bench.py [--batch 8] [--threads 2] [--warmup 3] [--iters 10] [--rounds 3]

Models (random weights; speed does not depend on them):
- LITv2-S: HiLo in stage 3 (s = 2, α = 0.9), global attention in stage 4, as published;
- LITv2-S α = 0: every stage-3 head does Hi-Fi (2×2 window) attention;
- LITv2-S MSA: standard global attention in stages 3–4 (s = 1);
- DeiT-S (timm deit_small_patch16_224).

Each is exported with exporter.export.onnx_export at a fixed batch and run in one process with the same session
options. Timing interleaves the models round by round, so drift of the machine affects them alike; the reported
time is the median over rounds of the mean per-batch time. FLOPs are multiply-accumulates per image counted by
torch's FlopCounterMode (matmuls, convolutions, attention; for LITv2 this equals `litv2_flops`).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

import exporter.models.litv2  # noqa: E402,F401  (registers litv2_*)
from exporter.export.onnx_export import export_onnx  # noqa: E402

IMG = 224
# label -> (timm name, extra kwargs, what stages 3-4 attention is)
MODELS = {
    "LITv2-S": ("litv2_small", {}, "HiLo s=2 α=0.9 / MSA"),
    "LITv2-S α=0": ("litv2_small", {"alpha": 0.0}, "Hi-Fi only (2×2 windows) / MSA"),
    "LITv2-S MSA": ("litv2_small", {"local_ws": (0, 0, 1, 1)}, "MSA / MSA"),
    "DeiT-S": ("deit_small_patch16_224", {}, "MSA in all 12 blocks"),
}


def macs(name: str, kwargs: dict) -> int:
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, **kwargs).eval()
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.empty(1, 3, IMG, IMG))
    return counter.get_total_flops() // 2


def session(path: Path, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def time_batches(sess: ort.InferenceSession, x: np.ndarray, iters: int) -> float:
    """Mean seconds per batch over `iters` runs."""
    start = time.perf_counter()
    for _ in range(iters):
        sess.run(None, {"input": x})
    return (time.perf_counter() - start) / iters


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads (same for every model)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed runs per model before timing")
    ap.add_argument("--iters", type=int, default=10, help="timed runs per model per round")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median round is reported")
    ap.add_argument("--workdir", type=Path, default=None, help="where the ONNX files go (default: a temp dir)")
    args = ap.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="litv2_bench_"))
    x = np.random.default_rng(0).standard_normal((args.batch, 3, IMG, IMG)).astype(np.float32)
    sessions, flops = {}, {}
    for label, (name, kwargs, _) in MODELS.items():
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False, **kwargs).eval()
        path = workdir / (label.replace(" ", "_").replace("=", "").replace("α", "alpha") + ".onnx")
        t = time.perf_counter()
        export_onnx(model, path, IMG, batch=(args.batch,) * 3)
        print(f"exported {label} in {time.perf_counter() - t:.0f}s -> {path}", flush=True)
        flops[label] = macs(name, kwargs)
        sessions[label] = session(path, args.threads)
        for _ in range(args.warmup):
            sessions[label].run(None, {"input": x})

    times: dict[str, list[float]] = {label: [] for label in MODELS}
    for _ in range(args.rounds):
        for label, sess in sessions.items():
            times[label].append(time_batches(sess, x, args.iters))

    ref = "LITv2-S"
    ms = {label: statistics.median(ts) * 1e3 for label, ts in times.items()}
    print(f"\nonnxruntime {ort.__version__} CPU, {platform.processor() or platform.machine()}, "
          f"{args.threads} intra-op threads, batch {args.batch}, {IMG}², fp32; median of {args.rounds} rounds × "
          f"{args.iters} batches after {args.warmup} warm-up batches\n")
    print("| model | stage 3 / 4 attention | GFLOPs (MACs) | ms/batch | img/s | speed vs LITv2-S | FLOPs vs LITv2-S |")
    print("|---|---|---|---|---|---|---|")
    for label, (_, _, attn) in MODELS.items():
        print(f"| {label} | {attn} | {flops[label] / 1e9:.2f} | {ms[label]:.1f} | {args.batch / ms[label] * 1e3:.1f} "
              f"| {ms[ref] / ms[label]:.2f}× | {flops[label] / flops[ref]:.2f}× |")


if __name__ == "__main__":
    main()
