# SPDX-License-Identifier: Apache-2.0
"""`python -m exporter <command>`: build, engine, verify, inspect, sign, methods, bench, perf, search.

Argument parsing only: each command's arguments go to its module in `exporter.commands`. Those modules, and
`options` (which reads the methods' parameters), import torch and onnx: they are imported when a command runs or
its parser is built, so `--version` needs neither. Errors a user can fix print as a short paragraph (problem + fix) with a non-zero exit; pass
--debug for the traceback.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from rich.console import Console

from . import __version__
from .console import escape, inert, make as make_console
from .errors import BuildFailed, ExporterError, mismatched_torchvision, out_of_memory
from .interrupt import exit_code, interrupted_message, terminate_as_interrupt

EXIT_FAILED = 1  # verification or a graph check failed
EXIT_USAGE = 2  # the user's input is wrong


def _add_build(sub) -> None:
    from .options import add_build_arguments  # imports torch (see the module docstring)

    p = sub.add_parser(
        "build",
        help="export a (token-reduced) ViT to a verified ONNX bundle",
        description="Export a timm ViT, optionally token-reduced, to static-shape ONNX (fp32, and fp16), "
        "check the graphs, verify them against PyTorch on held-out inputs, and write artifacts/<run>/.",
    )
    add_build_arguments(p)
    p.set_defaults(run=_build)


def _passed(args, where) -> None:
    """The result line on stdout: PASSED, where the output is, the command's wall time."""
    args.stdout.print(f"[bold green]PASSED[/bold green] | {escape(str(where))} | {time.perf_counter() - args.start:.1f}s")


def _build(args, console: Console) -> int:
    from .commands.build import build  # torch, onnx (see the module docstring)
    from .options import spec_from_args

    spec = spec_from_args(args)
    command = "python -m exporter " + " ".join(shlex.quote(a) for a in args.argv)
    bundle = build(spec, args.out, command, console, args.sign)
    _passed(args, bundle)
    return 0


def _add_trust(p, verify: bool = False) -> None:
    """--trusted-key and --trust-plugins (verify: also --require-signature): see exporter/bundle/trust.py."""
    p.add_argument("--trusted-key", type=Path, action="append", default=[], metavar="PUB",
                   help="a public key (PEM) you trust: check the bundle's signature (signature.sig) with it, and load "
                   "its plugin library only when it verifies; repeat for several signers")
    p.add_argument("--trust-plugins", action="store_true",
                   help="load the bundle's plugin library (native code, run on load) without a verified signature: "
                   "only for a bundle whose origin you trust")
    if verify:
        p.add_argument("--require-signature", action="store_true",
                       help="fail (exit 1) unless a --trusted-key verifies the bundle's signature")


def _add_verify(sub) -> None:
    p = sub.add_parser(
        "verify",
        help="re-check an existing bundle against PyTorch",
        description="Check a bundle's file hashes, graphs and parity against PyTorch again (e.g. after copying it); "
        "with --data, also measure its accuracy on labelled images.",
    )
    p.add_argument("bundle", type=Path, help="a directory written by `build`, e.g. artifacts/<run>")
    p.add_argument("--weights", type=Path, default=None, help="the bundle's checkpoint at a new location (it must be the same file)")
    p.add_argument("--report", type=Path, default=None, help="write the report here (.json, else markdown) instead of to stdout")
    p.add_argument("--engine", default=None, metavar="TARGET",
                   help="also require this engine (e.g. sm86-tensorrt-rtx, or sm86) to run here on the stored PyTorch "
                   "references; without it, engines that cannot run on this machine are reported as skipped")
    p.add_argument("--references-only", action="store_true",
                   help="check only the file hashes, then onnxruntime and the engines on the PyTorch references stored "
                   "in the bundle: no PyTorch model, weights or network needed (e.g. on a Jetson)")
    p.add_argument(
        "--data", type=Path, default=None, metavar="DIR",
        help="also report top-1/top-5 of PyTorch and every graph on labelled images: DIR/<class>/<image> "
        "(classes in sorted order, as torchvision's ImageFolder)",
    )
    _add_trust(p, verify=True)
    p.set_defaults(run=_verify)


def _verify(args, console: Console) -> int:
    from .commands.verify import verify  # torch, onnx (see the module docstring)

    verify(args.bundle, console, weights=args.weights, report_to=args.report, engine=args.engine,
           references_only=args.references_only, data=args.data, trusted_keys=args.trusted_key,
           require_signature=args.require_signature, trust_plugins=args.trust_plugins)
    _passed(args, args.bundle)
    return 0


def _add_inspect(sub) -> None:
    p = sub.add_parser(
        "inspect",
        help="show what a bundle holds: graphs, plugin nodes and the plugins they need, engines",
        description="Read a bundle without running anything: its build and verdict, each graph's inputs, outputs "
        "and operators, every plugin node with the TensorRT plugin it needs (name, version, namespace, attributes), "
        "the engines, and whether the files still match the manifest (damaged parts are shown, not refused).",
    )
    p.add_argument("bundle", type=Path, help="a directory written by `build`, e.g. artifacts/<run>")
    p.add_argument("--json", action="store_true", help="print the same as JSON")
    p.set_defaults(run=_inspect)


def _inspect(args, console: Console) -> int:
    from .commands.inspect import describe, render  # onnx (see the module docstring)

    info = describe(args.bundle)
    if args.json:
        args.stdout.print_json(json.dumps(info), ensure_ascii=True)  # control characters as \u001b: inert
    else:
        render(info, args.stdout)
    return 0


def _add_engine(sub) -> None:
    p = sub.add_parser(
        "engine",
        help="build (or reuse) a TensorRT / TensorRT-RTX engine from a bundle",
        description="Build a strongly typed engine from a bundle's ONNX into engines/<target>-<runtime>/, with an "
        "optimization profile for the bundle's batch range and a timing cache kept there. An engine whose inputs are "
        "unchanged (same content key) is reused. TensorRT builds for the GPU it runs on; TensorRT-RTX builds here for "
        "--target, no GPU needed.",
    )
    p.add_argument("bundle", type=Path, help="a directory written by `build`, e.g. artifacts/<run>")
    p.add_argument("--graph", default=None, help="fp16 | fp32 | plugins | plugins-fp16 | int8 | fp8 | plugins-int8 | plugins-fp8 (default: fp16 when the bundle has it, else fp32)")
    p.add_argument("--runtime", default="tensorrt", help="tensorrt (on the target GPU) | tensorrt-rtx (default %(default)s)")
    p.add_argument("--target", default=None, help="compute capability, e.g. sm86; required for tensorrt-rtx, "
                   "for tensorrt it must be the GPU present (default: that GPU)")
    p.add_argument("--force", action="store_true", help="rebuild even when the cache has this engine")
    _add_trust(p)
    p.set_defaults(run=_engine)


def _engine(args, console: Console) -> int:
    from .commands.engine import engine  # onnx (see the module docstring)

    result = engine(args.bundle, args.graph, args.runtime, args.target, args.force, console, args.trusted_key,
                    args.trust_plugins)
    _passed(args, result.folder)
    return 0


def _add_sign(sub) -> None:
    p = sub.add_parser(
        "sign",
        help="sign a bundle with a private key, so a receiver can check who built it (verify --trusted-key)",
        description="Sign the manifest and every file it hashes (everything but engines/ and bench/) with an "
        "elliptic-curve private key (PEM; OpenSSF model-signing) into BUNDLE/signature.sig. The bundle's files must "
        "match its manifest. A receiver checks it with `verify BUNDLE --trusted-key PUB`.",
    )
    p.add_argument("bundle", type=Path, help="a directory written by `build`, e.g. artifacts/<run>")
    p.add_argument("--key", type=Path, required=True, help="the private key (PEM, P-256/384/521, no passphrase)")
    p.set_defaults(run=_sign)


def _sign(args, console: Console) -> int:
    from .commands.sign import sign

    sign(args.bundle, args.key, console)
    _passed(args, args.bundle)
    return 0


def _add_methods(sub) -> None:
    from .options import add_method_params  # imports torch (see the module docstring)

    p = sub.add_parser(
        "methods",
        help="list methods and their parameters; with --model, print the token schedule and FLOPs",
        description="List the token-reduction methods. With --model, build it with random weights, apply "
        "--method (all methods if omitted) with the given parameters and print tokens per block and GMACs.",
    )
    p.add_argument("--model", default=None, help="a timm ViT name, e.g. deit_small_patch16_224")
    p.add_argument("--method", default=None, help="only this method")
    p.add_argument("--img-size", type=int, default=None)
    add_method_params(p)
    p.set_defaults(run=_methods)


def _methods(args, console: Console) -> int:
    from .commands.methods import methods  # torch (see the module docstring)
    from .options import given_params

    methods(args.stdout, args.model, args.method, args.img_size, given_params(args))
    return 0


BENCH_MODELS, BENCH_MODELS_BATCH = "deit_small_patch16_224", 8
BENCH_EXPORT_FLAGS = ("models", "weights", "methods", "img_size")  # the export mode's own options


def _add_bench(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="time bundles in every runtime present (or, with --models, every method exported on the fly)",
        description="With bundles: time each in every runtime that can run it here (onnxruntime on each of its graphs, "
        "PyTorch eager, PyTorch fp16 and CUDA graphs on a GPU, its engines), per batch size, and write bench/bench.json, "
        "bench.md and bench.png into every bundle, reduced bundles' speedups measured against the dense bundle. "
        "Without bundles: export every method (at its default parameters) of every --models model with a static batch "
        "and print measured speedups next to FLOPs ratios, onnxruntime against PyTorch, and the share of time spent in "
        "the token-reduction machinery. Either way each runtime runs in a process of its own with the same thread "
        "settings, and the candidates take turns round by round.",
    )
    p.add_argument("bundles", nargs="*", type=Path, metavar="BUNDLE",
                   help="directories written by `build`, e.g. artifacts/<dense run> artifacts/<reduced run>")
    p.add_argument("--batch", default=None,
                   help="with bundles: comma-separated sizes within every bundle's batch range (default: the bundles' "
                   f"min, opt and max); with --models: one size (default {BENCH_MODELS_BATCH})")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads for every runtime (default %(default)s)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default %(default)s)")
    p.add_argument("--iterations", type=int, default=5, help="batches per candidate per round (default %(default)s)")
    _add_trust(p)
    g = p.add_argument_group("without bundles: export and time methods")
    g.add_argument(
        "--models",
        "--model",
        default=None,
        help="comma-separated timm names; a variant as name(arg=value, ...), e.g. litv2_small(alpha=0.0) "
        f"(default {BENCH_MODELS})",
    )
    g.add_argument("--weights", default=None, help="timing does not depend on the weights (default random)")
    g.add_argument("--methods", default=None, help="comma-separated (default: all, dense first)")
    g.add_argument("--img-size", type=int, default=None)
    p.set_defaults(run=_bench)


def _bench(args, console: Console) -> int:
    from .commands.bench import bench_bundles, bench_models  # torch, onnxruntime (see the module docstring)
    from .options import check_bench_args, flag

    batches = check_bench_args(args)
    if args.bundles:
        given = [flag(name) for name in BENCH_EXPORT_FLAGS if getattr(args, name) is not None]
        if given:
            raise ExporterError(
                f"bench takes bundles or {', '.join(given)}, not both: a bundle's model and method were fixed by its build.",
                f"Drop {', '.join(given)} to time the bundles, or drop the bundles to export and time methods.",
            )
        folders = bench_bundles(args.bundles, batches, args.threads, args.rounds, args.iterations, console,
                                args.trusted_key, args.trust_plugins)
        _passed(args, ", ".join(map(str, folders)))
        return 0
    if batches is not None and len(batches) > 1:
        raise ExporterError(f"--batch {args.batch}: bench --models times one batch size.",
                            "Pass one --batch size, or build bundles and bench them (`bench BUNDLE... --batch 1,8,32`).")
    bench_models(args.models or BENCH_MODELS, args.weights or "random", args.methods, args.img_size,
                 batches[0] if batches else BENCH_MODELS_BATCH, args.threads, args.rounds, args.iterations, console)
    return 0


def _add_perf(sub) -> None:
    from .ops.perf import GPUS, Model  # imports torch (see the module docstring)
    from .options import add_method_params

    p = sub.add_parser(
        "perf",
        help="static GPU-time estimate of a reduced model from its compiled kernels (no GPU needed)",
        description="Compile every token-op kernel the model uses for --arch, read registers, occupancy and "
        "instructions from the cubins, and estimate each op's time and the whole forward against dense with a "
        "stated model of published GPU figures (docs/perf.md). An estimate, not a measurement.",
    )
    p.add_argument("--model", default="deit_small_patch16_224", help="a timm ViT name or litv2_small (default %(default)s)")
    p.add_argument("--method", default="none", help="none, evit, evovit, diffrate, tome (LITv2: none, its HiLo)")
    p.add_argument("--img-size", type=int, default=None)
    p.add_argument("--batch", default="256", help="batch size, or several: 64,256 (--json: a list)")
    p.add_argument("--arch", default="sm_90", choices=sorted(GPUS))
    p.add_argument("--precision", default="fp16", choices=("fp16", "fp32"))
    p.add_argument("--gemm-efficiency", type=float, default=Model.gemm_efficiency,
                   help="share of the tensor-core peak GEMMs reach (default %(default)s)")
    p.add_argument("--attention-efficiency", type=float, default=Model.attention_efficiency,
                   help="share of the peak flash attention reaches (default %(default)s)")
    p.add_argument("--jobs", type=int, default=0, help="compiler processes (default: the CPUs)")
    p.add_argument("--json", action="store_true", help="print the estimate as JSON on stdout")
    add_method_params(p)
    p.set_defaults(run=_perf)


def _perf(args, console: Console) -> int:
    from .commands.perf import run  # torch, triton (see the module docstring)
    from .methods import get_method
    from .ops.perf import Model
    from .options import given_params, parsed_params

    sizes = args.batch.split(",")
    batches = [int(b) for b in sizes] if all(b.isdigit() for b in sizes) else []
    if not batches or min(batches) < 1 or not (0 < args.gemm_efficiency <= 1 and 0 < args.attention_efficiency <= 1):
        raise ExporterError(f"--batch {args.batch!r} must be sizes >= 1 (e.g. 64,256) and the efficiencies in (0, 1].",
                            "e.g. --batch 64,256 --gemm-efficiency 0.6")
    params = parsed_params(get_method(args.method), given_params(args))
    run(args.stdout, args.model, args.method, params, args.img_size, batches, args.arch, args.precision,
        Model(args.gemm_efficiency, args.attention_efficiency), args.jobs, args.json)
    return 0


def _add_search(sub) -> None:
    p = sub.add_parser(
        "search",
        help="learn a DiffRate schedule (per-block prune and merge counts) for a model and a FLOPs or latency budget",
        description="DiffRate's differentiable search with the model frozen: only the per-block rates train, on "
        "labelled images, against the dense model plus a penalty on the cost's distance to the target. Writes a "
        "schedule file for `build --method diffrate --schedule FILE`, and compares it with a uniform schedule of "
        "the same cost and the scaled published DeiT-S schedule.",
    )
    p.add_argument("--method", default="diffrate", help="diffrate (the only method that searches its rates)")
    p.add_argument("--model", required=True, help="a timm ViT with a class token, e.g. deit_small_patch16_224")
    p.add_argument("--weights", default="pretrained", help="pretrained, random or a checkpoint path (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seeds the search, the image choice and random weights")
    p.add_argument("--img-size", type=int, default=None)
    p.add_argument("--data", type=Path, required=True, metavar="DIR", help="search images, DIR/<class>/<image>")
    p.add_argument("--eval-data", type=Path, default=None, metavar="DIR", help="held-out images for the comparison")
    p.add_argument("--images", type=int, default=1000, help="search on at most this many images (default %(default)s)")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--target-flops", type=float, metavar="GMACS", help="the budget in GMACs (papers' GFLOPs)")
    budget.add_argument("--target-latency-ms", type=float, metavar="MS",
                        help="the budget in ms per batch on --runtime: one block is measured per token count and fitted")
    p.add_argument("--runtime", choices=["onnxruntime", "pytorch", "pytorch-cuda-graph"], default="onnxruntime",
                   help="where --target-latency-ms is measured: onnxruntime or pytorch (eager) on the CPU, pytorch-cuda-graph "
                   "(fp16 CUDA graph replays) on the GPU (default %(default)s)")
    p.add_argument("--batch", type=int, default=1, help="batch size of the latency budget (default %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads of the latency measurement, as bench's "
                   "(default %(default)s)")
    p.add_argument("--epochs", type=int, default=6, help="default %(default)s")
    p.add_argument("--batch-size", type=int, default=16, help="images per step (default %(default)s)")
    p.add_argument("--lr", type=float, default=0.1, help="the rates' peak learning rate (default %(default)s; "
                   "the authors' 0.01 is for thousands of steps, docs/search.md)")
    p.add_argument("--min-lr", type=float, default=0.01, help="cosine schedule floor (default %(default)s)")
    p.add_argument("--penalty", type=float, default=50.0, help="weight of (cost/target - 1)^2 (default %(default)s)")
    p.add_argument("--granularity", type=int, default=1, help="step between candidate counts (default %(default)s; the authors used 4)")
    p.add_argument("--start", dest="start_rates", choices=("uniform", "zero"), default="uniform",
                   help="where the rates start: centred on the uniform schedule of the target cost, or the authors' zero "
                   "logits, half the patches in every block (default %(default)s; docs/search.md)")
    p.add_argument("--checkpoint", type=Path, default=None, help="save the rates here every epoch and resume from it")
    p.add_argument("--out", type=Path, default=None, help="the schedule file (default schedules/<model>-diffrate-<target>.json)")
    p.set_defaults(run=_search)


def _search(args, console: Console) -> int:
    from .commands.search import run  # torch (see the module docstring)

    _passed(args, run(args, console, args.stdout))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m exporter",
        description="Token-reduction Vision Transformers to verified ONNX / TensorRT deployment bundles.",
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--version", action="version", version=f"exporter {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_build(sub)
    _add_engine(sub)
    _add_verify(sub)
    _add_inspect(sub)
    _add_sign(sub)
    _add_methods(sub)
    _add_bench(sub)
    _add_perf(sub)
    _add_search(sub)
    for command in sub.choices.values():  # --debug after the command too; SUPPRESS keeps one given before it
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--version"]:  # before the command parsers, which import torch
        print(f"exporter {__version__}")
        return 0
    try:
        args = parser().parse_args(argv)
    except RuntimeError as e:  # building the parser imports timm, and timm torchvision
        error = mismatched_torchvision(e)
        if error is None or "--debug" in argv:
            raise
        _say(make_console(), error)
        return EXIT_USAGE
    args.argv = argv
    console = make_console()
    args.stdout = make_console(stderr=False)
    start = args.start = time.perf_counter()
    try:
        with terminate_as_interrupt():
            return args.run(args, console)
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (see interrupt.py): cleanup has run on the way out
        if args.debug:
            raise
        console.print(interrupted_message(e), markup=False)
        return exit_code(e)
    except BuildFailed as e:
        if args.debug:
            raise
        args.stdout.print(inert(str(e), lines=True), markup=False)
        args.stdout.print(f"[bold red]FAILED[/bold red] | {escape(str(e.where))} | {time.perf_counter() - start:.1f}s")
        return EXIT_FAILED
    except Exception as e:  # the user's mistakes, and a batch too large for this machine's memory
        error = e if isinstance(e, ExporterError) else out_of_memory(e)
        if args.debug or error is None:
            raise
        _say(console, error)
        return EXIT_USAGE


def _say(console: Console, error: ExporterError) -> None:
    """A user's mistake as one paragraph: the problem, then the fix."""
    console.print(f"[bold red]error:[/bold red] {escape(error.problem)}")
    if error.fix:
        console.print(f"  [bold]fix:[/bold] {escape(error.fix)}")


if __name__ == "__main__":
    sys.exit(main())
