# SPDX-License-Identifier: Apache-2.0
"""Per-op GPU time of each fused token op against its standard ops (the reference maths, what a decomposed
graph computes), on the calls a real model makes, beside the static estimates of `exporter.ops.perf`.

    python benchmarks/gpu_ops_bench.py [--model deit_small_patch16_224] [--methods evit,evovit,tome,diffrate]
                                       [--batch 64,256] [--precision fp16] [--estimates DIR] [--rounds 5] [--iterations 30]

Per batch size and method, the reduced model (random weights) runs once on the GPU and every token op call
is captured with its inputs (so the shapes are the method's own schedule). Each call's fused kernel
(`torch.ops.exporter.<op>` on CUDA) is checked against the reference on the same inputs before anything is
timed: indices equal, values close; a mismatch fails the run (exit 1) after the table. Both sides are then
captured as CUDA graphs and replayed back to back (CUDA events), alternating round by round; medians are
reported. Each batch size's table is printed as soon as it is timed. With --estimates, the static estimate
of each call (DIR/estimate.<method>.json, written by `python -m exporter perf --json --batch ...`) is
printed beside the measurement, so the model can be corrected.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from exporter import ops  # noqa: E402
from exporter.bench.cuda import graphed, timed  # noqa: E402
from exporter.ops import reference  # noqa: E402

DTYPES = {"fp16": torch.float16, "fp32": torch.float32}


def captured_calls(model, x) -> list[tuple[str, tuple]]:
    """(op, inputs) of every token op call of one forward, in call order (inputs kept as passed)."""
    calls = []

    class Capture(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.namespace == "exporter":
                calls.append((func.overloadpacket.__name__, tuple(a.clone() if isinstance(a, torch.Tensor) else a
                                                                  for a in args)))
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), ops.lowering("plugin"), Capture():
        model(x)
    return calls


def mismatch(ref_out, fused_out, dtype) -> str:
    """Why the fused outputs differ from the reference's ('' when they agree): indices must be equal, values
    within fp16 rounding of the reference (relative 2e-3, absolute 2e-2 for fp16; 1e-5 / 1e-4 for fp32)."""
    ref_out = ref_out if isinstance(ref_out, tuple) else (ref_out,)
    fused_out = fused_out if isinstance(fused_out, tuple) else (fused_out,)
    rtol, atol = (2e-3, 2e-2) if dtype == torch.float16 else (1e-5, 1e-4)
    for n, (a, b) in enumerate(zip(ref_out, fused_out)):
        if a.shape != b.shape:
            return f"output {n}: shape {tuple(b.shape)}, reference {tuple(a.shape)}"
        if a.dtype == torch.int64:
            if not torch.equal(a, b):
                return f"output {n}: {(a != b).sum().item()} of {a.numel()} indices differ"
        elif not torch.allclose(a.float(), b.float(), rtol=rtol, atol=atol):
            return f"output {n}: max |difference| {(a.float() - b.float()).abs().max().item():.3g}"
    return ""


def estimates(folder, method: str, batch: int) -> list:
    """The static estimate's rows for `method` at `batch` (empty when there is none)."""
    path = Path(folder) / f"estimate.{method}.json" if folder else None
    if path is None or not path.is_file():
        return []
    data = json.loads(path.read_text())
    for result in data if isinstance(data, list) else [data]:
        if result["batch"] == batch:
            return result["ops"]
    return []


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="deit_small_patch16_224")
    ap.add_argument("--methods", default="evit,evovit,tome,diffrate", help="methods at their defaults (LITv2: --model litv2_small --methods none)")
    ap.add_argument("--batch", default="64,256")
    ap.add_argument("--precision", choices=sorted(DTYPES), default="fp16")
    ap.add_argument("--estimates", default=None, help="folder of exporter.ops.perf --json outputs: estimate.<method>.json")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iterations", type=int, default=30)
    args = ap.parse_args()
    batches = [int(b) for b in args.batch.split(",")]
    if not torch.cuda.is_available():
        print("No CUDA GPU is visible to PyTorch: run this on the GPU machine.", file=sys.stderr)
        return 2
    from exporter.methods import apply_method
    from exporter.models import create_model, input_size

    dtype = DTYPES[args.precision]
    print(f"{torch.cuda.get_device_name()}, {args.model}, {args.precision}, CUDA graphs, medians of {args.rounds} "
          f"rounds of {args.iterations}; estimates: {args.estimates or 'none'} (static, see exporter/ops/perf.py)", flush=True)
    failures = []
    dense = create_model(args.model, "random", 0)
    x_size = input_size(dense)
    for batch in batches:
        x = torch.randn(batch, 3, *x_size, generator=torch.Generator().manual_seed(0)).to("cuda", dtype)
        lines = [f"\nbatch {batch}",
                 "| method | # | op | tokens | standard ops µs | fused µs | speedup | est. standard µs | est. fused µs "
                 + "| measured / est. |", "|---|---|---|---|---|---|---|---|---|---|"]
        for method in args.methods.split(","):
            model = apply_method(dense, method).to("cuda", dtype)
            calls = captured_calls(model, x)
            est = estimates(args.estimates, method, batch)
            sums = [0.0, 0.0, 0.0, 0.0]
            for n, (op, inputs) in enumerate(calls):
                ref_fn = lambda _, op=op, inputs=inputs: getattr(reference, op)(*inputs)  # noqa: E731
                fused_fn = lambda _, op=op, inputs=inputs: getattr(torch.ops.exporter, op)(*inputs)  # noqa: E731
                with torch.no_grad():
                    why = mismatch(ref_fn(None), fused_fn(None), dtype)
                    if why:
                        failures.append(f"batch {batch} {method} #{n} {op}: {why}")
                    replays = {"ref": graphed(ref_fn, None), "fused": graphed(fused_fn, None)}
                times = {k: [] for k in replays}
                for _ in range(args.rounds):
                    for k, replay in replays.items():
                        times[k].append(timed(replay, args.iterations))
                ref_us, fused_us = statistics.median(times["ref"]), statistics.median(times["fused"])
                tokens = f"{inputs[0].shape[1]}"
                row = est[n] if n < len(est) and est[n]["op"] == op else None
                if row:
                    tokens = f"{row['tokens'][0]}→{row['tokens'][1]}"
                sums = [sums[0] + ref_us, sums[1] + fused_us, sums[2] + (row["standard_us"] if row else 0),
                        sums[3] + (row["estimate_us"] if row else 0)]
                lines.append(f"| {method} | {n} | {op} | {tokens} | {ref_us:.1f} | {fused_us:.1f} | {ref_us / fused_us:.2f}x | "
                             + (f"{row['standard_us']:.1f} | {row['estimate_us']:.1f} | {fused_us / row['estimate_us']:.2f} |"
                                if row else "— | — | — |") + (" **MISMATCH**" if why else ""))
            if calls:
                lines.append(f"| {method} | all | {len(calls)} calls | | {sums[0]:.1f} | {sums[1]:.1f} | {sums[0] / sums[1]:.2f}x | "
                             + (f"{sums[2]:.1f} | {sums[3]:.1f} | {sums[1] / sums[3]:.2f} |" if est else "— | — | — |"))
            del model
        print("\n".join(lines), flush=True)
    if failures:
        print("\nFUSED OUTPUTS DIFFER FROM THE STANDARD OPS:\n" + "\n".join(failures), flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
