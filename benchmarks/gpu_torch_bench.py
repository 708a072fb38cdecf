# SPDX-License-Identifier: Apache-2.0
"""PyTorch throughput of every token-reduction method against the dense model on an NVIDIA GPU: the
standard-op reduction, the fused kernels, the authors' formulation and torch.compile side by side.

    python benchmarks/gpu_torch_bench.py [--model deit_small_patch16_224] [--batch 64,256] [--precision fp16]
                                         [--eager] [--compile 256] [--rounds 9] [--iterations 30]
                                         [--litv2 litv2_small,litv2_medium]

Quick run (about a minute on an H100-class GPU: no torch.compile, one batch size, fewer rounds):

    python benchmarks/gpu_torch_bench.py --batch 64 --compile "" --rounds 5 --iterations 20

Per method, the variants timed (each against the dense model, in the same interleaved rounds):
- `standard ops`: the reduced model with its token ops in standard PyTorch ops (what a decomposed ONNX
  graph computes: TopK, gathers, one-hot MatMuls);
- `fused`: the same model with every token op as its fused Triton kernel (`exporter.ops`' CUDA kernels,
  the kernels the TensorRT plugins launch);
- `authors'`: the authors' formulation, as the tests' reference implementations of their code compute it
  (sorts, scatter_reduce, explicit attention maps), without the tests' diagnostics;
- `compiled`: `torch.compile` of the standard-op model, and of the dense model (what a user would try
  instead), at the batch sizes `--compile` names (compilation is the slow part of a run).

Beside them, LITv2 (`--litv2`; HiLo attention, no token reduction): each model with HiLo's Hi-Fi window
attention as standard ops (the decomposed graph's reshapes, transposes, 4-token MatMuls) and as the fused
`hilo_attention` kernel, end to end and as microbenchmarks of stage 3's first HiLo layer (the whole layer:
projections, Hi-Fi and Lo-Fi; and the Hi-Fi window attention op alone, on that layer's q/k/v). Stage 4 (s = 1)
has no Hi-Fi heads, so nothing there changes. LITv2-S and -M share stage 3's layer shape: it is timed once.

By default every variant is captured once as a CUDA graph and replayed, so the times are GPU time without
Python's launch overhead, which an engine avoids too; `--eager` times module calls instead. Before timing,
each fused model's logits are compared with its standard-op model's on the benchmark input (top-1
agreement, max abs difference), so a speedup never comes from a kernel computing something else. Random
weights: with static token counts, speed does not depend on them. FLOPs are torch's FlopCounterMode count.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from exporter import ops  # noqa: E402
from exporter.bench.cuda import graphed, synced  # noqa: E402
from exporter.bench.throughput import candidates, selected_methods, table  # noqa: E402
from exporter.bench.timing import interleaved, local, ratios  # noqa: E402
from exporter.models import create_model, input_size  # noqa: E402

DTYPES = {"fp16": torch.float16, "fp32": torch.float32}


def authors(model):
    """The authors' formulation of `model`'s method (the tests' reference code), or None for the dense model."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    import reference_diffrate_tome as dt
    import reference_evit_evovit as ee

    p, vit = model.params, getattr(model, "vit", None)
    forms = {
        "evit": lambda x: ee.evit(vit, x, p["keep_rate"], p["locations"], p["fuse"], diagnostics=False)[0],
        "evovit": lambda x: ee.evovit(vit, x, p["keep_rate"], p["stages"], p["alpha"], diagnostics=False)[0],
        "diffrate": lambda x: dt.diffrate(vit, x, p["prune_kept"], p["merge_kept"], diagnostics=False)[0],
        "tome": lambda x: dt.tome(vit, x, getattr(model, "r", None), p["prop_attn"], diagnostics=False)[0],
    }
    return forms.get(model.method)


def variants(cand, compiled: bool) -> dict:
    """label -> (fn(x), fused kernels on while capturing) for one method."""
    out = {}
    if cand.method == "none":
        out["dense"] = (cand.model, False)
        if compiled:
            out["dense, compiled"] = (torch.compile(cand.model), False)
        return out
    out[f"{cand.method}, standard ops"] = (cand.model, False)
    out[f"{cand.method}, fused"] = (cand.model, True)
    form = authors(cand.model)
    if form is not None:
        out[f"{cand.method}, authors'"] = (form, False)
    if compiled:
        out[f"{cand.method}, compiled"] = (torch.compile(cand.model), False)
    return out


def litv2_labels(litv2: dict) -> set:
    """The end-to-end LITv2 entries' standard-op labels (the others are layer microbenchmarks)."""
    return {f"{name}, standard ops" for name in litv2}


def agreement(model, x) -> str:
    """Fused vs standard-op logits of `model` on `x`: top-1 agreement and max abs difference."""
    with ops.fused_kernels(False):
        want = model(x).float()
    got = model(x).float()
    top1 = (want.argmax(-1) == got.argmax(-1)).float().mean().item()
    return f"top-1 {top1:.1%}, max |Δ| {(got - want).abs().max().item():.3g}"


def hilo_variants(name: str, model, batch: int, dtype, seen: set) -> tuple[dict, list]:
    """LITv2 `model`'s timed entries, label -> (fn, input, fused), and the (standard, fused) label pairs:
    end to end, and stage 3's first HiLo layer and its window op unless a model before had that layer shape."""
    from exporter.models.hilo import HiLo

    calls = {f"{name}, standard ops": (model, None, False), f"{name}, fused HiLo": (model, None, True)}
    pairs = [(f"{name}, standard ops", f"{name}, fused HiLo")]
    layer = next(m for m in model.modules() if isinstance(m, HiLo) and m.h_heads)  # stage 3's first
    stride = next(stride for _, stride, ws in model.hilo_windows if ws > 1)
    h, w = (side // stride for side in model.patch_embed.img_size)
    shape = (layer.dim, layer.num_heads, layer.h_heads, h, w)
    if shape in seen:
        return calls, pairs
    seen.add(shape)
    tokens = torch.randn(batch, h * w, layer.dim, device="cuda", dtype=dtype)
    qkv, pad = layer.h_qkv(tokens), layer.h_qkv.bias
    what = f"{layer.dim} ch, {h}x{w}, s={layer.ws}, {layer.h_heads} Hi-Fi + {layer.l_heads} Lo-Fi heads"
    for kind, fn, x in (
        (f"HiLo layer ({what})", lambda t: layer(t, (h, w)), tokens),
        ("Hi-Fi window attention op", lambda q: ops.hilo_attention(q, pad, h, w, layer.ws, layer.h_heads), qkv),
    ):
        calls[f"{kind}, standard ops"] = (fn, x, False)
        calls[f"{kind}, fused"] = (fn, x, True)
        pairs.append((f"{kind}, standard ops", f"{kind}, fused"))
    return calls, pairs


def hilo_agreement(calls: dict, pair: tuple[str, str], images: torch.Tensor) -> str:
    """Max abs difference of a (standard, fused) pair's outputs (logits: top-1 agreement too); end-to-end
    entries (no input of their own) run on `images`."""
    (fn, x, _), label = calls[pair[0]], pair[0]
    x = images if x is None else x
    with ops.fused_kernels(False):
        want = fn(x).float()
    got = fn(x).float()
    top1 = f"top-1 {(want.argmax(-1) == got.argmax(-1)).float().mean().item():.1%}, " if want.dim() == 2 else ""
    diff = (got - want).abs().max().item()
    return f"{label.removesuffix(', standard ops')}: fused vs standard ops: {top1}max |Δ| {diff:.3g}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="deit_small_patch16_224")
    ap.add_argument("--methods", default=None, help="comma-separated (default: all, dense first)")
    ap.add_argument("--batch", default="64,256", help="comma-separated batch sizes (default %(default)s)")
    ap.add_argument("--precision", choices=sorted(DTYPES), default="fp16")
    ap.add_argument("--eager", action="store_true", help="time module calls instead of CUDA-graph replays")
    ap.add_argument("--compile", default="256", help="batch sizes that also time torch.compile ('' for none)")
    ap.add_argument("--rounds", type=int, default=9, help="interleaved rounds; medians are reported (default %(default)s)")
    ap.add_argument("--iterations", type=int, default=30, help="batches per model per round (default %(default)s)")
    ap.add_argument("--litv2", default="litv2_small,litv2_medium",
                    help="LITv2 models timed with standard-op vs fused HiLo ('' for none; default %(default)s)")
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
    litv2 = {name: create_model(name, "random", 0).to("cuda", DTYPES[args.precision])
             for name in args.litv2.split(",") if name}
    compile_at = {int(b) for b in args.compile.split(",") if b}
    mode = "eager" if args.eager else "CUDA graph"
    print(f"{args.model}, {args.precision}, {mode}, {torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"medians of {args.rounds} rounds x {args.iterations} batches")
    with torch.no_grad():
        for batch in (int(b) for b in args.batch.split(",")):
            x = torch.randn(batch, 3, *size, device="cuda", dtype=DTYPES[args.precision])
            calls, rows = {}, []
            for c in cands:
                if c.method != "none":
                    print(f"batch {batch}, {c.method}: fused vs standard ops: {agreement(c.model, x)}", flush=True)
                for label, (fn, fused) in variants(c, batch in compile_at).items():
                    with ops.fused_kernels(fused):
                        calls[label] = local(synced((lambda f=fn: f(x)) if args.eager else graphed(fn, x)))
                    rows.append(dataclasses.replace(c, label=label))
            hilo_calls, pairs, seen = {}, [], set()
            for name, model in litv2.items():
                more, more_pairs = hilo_variants(name, model, batch, DTYPES[args.precision], seen)
                hilo_calls.update(more)
                pairs += more_pairs
            for pair in pairs:
                print(f"batch {batch}, {hilo_agreement(hilo_calls, pair, x)}", flush=True)
            for label, (fn, inp, fused) in hilo_calls.items():
                inp = x if inp is None else inp
                with ops.fused_kernels(fused):
                    calls[label] = local(synced((lambda f=fn, i=inp: f(i)) if args.eager else graphed(fn, inp)))
            times = interleaved(calls, args.rounds, args.iterations, log=lambda _: None)
            for row in rows:
                row.torch_ms = times[row.label]
            print(f"\nbatch {batch}\n")
            print(table(rows, batch))
            if pairs:
                print(f"\nbatch {batch}, LITv2: HiLo's Hi-Fi window attention as standard ops vs the fused kernel\n")
                print(f"| what | standard ms | fused ms | fused speedup | standard img/s | fused img/s | "
                      f"img/s vs {args.model} dense (standard / fused) |")
                print("|---|---|---|---|---|---|---|")
                for standard, fused in pairs:
                    a, b = statistics.median(times[standard]), statistics.median(times[fused])
                    per_round = ratios(times[standard], times[fused])
                    whole = standard in litv2_labels(litv2)
                    rate = (lambda ms: f"{batch * 1000 / ms:.0f}") if whole else (lambda ms: "")
                    dense_ms = statistics.median(times["dense"]) if "dense" in times else None
                    vs_dense = f"{dense_ms / a:.2f}x / {dense_ms / b:.2f}x" if whole and dense_ms else ""
                    print(f"| {standard.removesuffix(', standard ops')} | {a:.3f} | {b:.3f} | "
                          f"{statistics.median(per_round):.2f}x ({min(per_round):.2f}–{max(per_round):.2f}) | "
                          f"{rate(a)} | {rate(b)} | {vs_dense} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
