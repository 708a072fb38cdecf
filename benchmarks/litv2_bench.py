"""onnxruntime CPU throughput of LITv2-S next to DeiT-S and to LITv2-S without HiLo's head split.

    python benchmarks/litv2_bench.py [--batch 8] [--threads 2] [--iters 10] [--rounds 3]

Models (random weights; speed does not depend on them):
- LITv2-S: HiLo in stage 3 (s = 2, α = 0.9), global attention in stage 4, as published;
- LITv2-S α = 0: every stage-3 head does Hi-Fi (2×2 window) attention;
- LITv2-S MSA: standard global attention in stages 3–4 (s = 1);
- DeiT-S (timm deit_small_patch16_224).

Each is exported with exporter.export.onnx_export at a fixed batch and timed in one process with the same session
options by `exporter bench`'s timer (`interleaved`: models take turns round by round, so drift of the machine
affects them alike). Times are medians over rounds; each ratio is the median of its per-round ratios. FLOPs are
multiply-accumulates per image counted by torch's FlopCounterMode (`count_gmacs`; for LITv2 this equals
`litv2_flops`).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import onnxruntime as ort  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402

import exporter.models.litv2  # noqa: E402,F401  (registers litv2_*)
from exporter.bench.throughput import interleaved, ratios  # noqa: E402
from exporter.export.onnx_export import export_onnx  # noqa: E402
from exporter.methods.flops import count_gmacs  # noqa: E402
from exporter.runtime import ort as ort_runtime  # noqa: E402

IMG = (224, 224)
# label -> (timm name, extra kwargs, what stages 3-4 attention is)
MODELS = {
    "LITv2-S": ("litv2_small", {}, "HiLo s=2 α=0.9 / MSA"),
    "LITv2-S α=0": ("litv2_small", {"alpha": 0.0}, "Hi-Fi only (2×2 windows) / MSA"),
    "LITv2-S MSA": ("litv2_small", {"local_ws": (0, 0, 1, 1)}, "MSA / MSA"),
    "DeiT-S": ("deit_small_patch16_224", {}, "MSA in all 12 blocks"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads (same for every model)")
    ap.add_argument("--iters", type=int, default=10, help="timed runs per model per round")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    ap.add_argument("--workdir", type=Path, default=None, help="where the ONNX files go (default: a temp dir)")
    args = ap.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="litv2_bench_"))
    x = torch.randn(args.batch, 3, *IMG, generator=torch.Generator().manual_seed(0)).numpy()
    calls, gmacs = {}, {}
    for label, (name, kwargs, _) in MODELS.items():
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False, **kwargs).eval()
        path = workdir / (label.replace(" ", "_").replace("=", "").replace("α", "alpha") + ".onnx")
        export_onnx(model, path, IMG, batch=(args.batch,) * 3)
        print(f"exported {label} -> {path}", flush=True)
        gmacs[label] = count_gmacs(model, IMG)
        calls[label] = lambda s=ort_runtime.session(path, args.threads): ort_runtime.run(s, x)
    times = interleaved(calls, args.rounds, args.iters)

    ref = "LITv2-S"
    print(f"\nonnxruntime {ort.__version__} CPU, {platform.processor() or platform.machine()}, "
          f"{args.threads} intra-op threads, batch {args.batch}, {IMG[0]}², fp32; median of {args.rounds} rounds × "
          f"{args.iters} batches\n")
    print("| model | stage 3 / 4 attention | GMACs | ms/batch | img/s | speed vs LITv2-S | FLOPs vs LITv2-S |")
    print("|---|---|---|---|---|---|---|")
    for label, (_, _, attn) in MODELS.items():
        ms = statistics.median(times[label])
        speed = statistics.median(ratios(times[ref], times[label]))
        print(f"| {label} | {attn} | {gmacs[label]:.2f} | {ms:.1f} | {args.batch / ms * 1e3:.1f} "
              f"| {speed:.2f}× | {gmacs[label] / gmacs[ref]:.2f}× |")


if __name__ == "__main__":
    main()
