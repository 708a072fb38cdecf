"""`python -m exporter <command>`: build, verify, methods, bench.

Errors a user can fix print as a short paragraph (problem + fix) with a non-zero exit; pass
--debug for the traceback.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from rich.console import Console

from .errors import ExporterError

EXIT_FAILED = 1  # verification or a graph check failed
EXIT_USAGE = 2  # the user's input is wrong


def _method_params():
    """Every method parameter once, for the build command's 'method parameters' group."""
    from .methods.base import REGISTRY

    seen = {}
    for method in REGISTRY.values():
        for p in method.params:
            entry = seen.setdefault(p.name, (p, []))
            entry[1].append(f"{method.name} (default {p.default})")
    return seen


def _add_build(sub) -> None:
    from .methods import list_methods
    from .spec import PRECISIONS, BuildSpec

    d = BuildSpec()
    p = sub.add_parser(
        "build",
        help="export a (token-reduced) ViT to a verified ONNX bundle",
        description="Export a timm ViT, optionally token-reduced, to static-shape ONNX (fp32, and fp16), "
        "check the graphs, verify them against PyTorch on held-out inputs, and write artifacts/<run>/.",
    )
    g = p.add_argument_group("model")
    g.add_argument("--model", default=d.model, help=f"timm model name or litv2_small/medium/base (default {d.model})")
    g.add_argument(
        "--weights",
        default=d.weights,
        help="'pretrained' (timm hub), 'random' (seeded by --seed), or a checkpoint path .pth/.pt/.safetensors "
        f"in timm's key layout (default {d.weights})",
    )
    g.add_argument("--seed", type=int, default=d.seed, help="seed for --weights random (default %(default)s)")
    g.add_argument("--img-size", type=int, default=None, help="input resolution (default: the model's own)")
    g = p.add_argument_group("method")
    g.add_argument("--method", default=d.method, help=f"one of {', '.join(list_methods())} (default {d.method})")
    mp = p.add_argument_group("method parameters (see `python -m exporter methods`)")
    for name, (param, users) in _method_params().items():
        mp.add_argument(param.flag, dest=f"param_{name}", default=None, metavar="VALUE", help=f"{param.help}; {', '.join(users)}")
    g = p.add_argument_group("export")
    g.add_argument("--precision", choices=PRECISIONS, default=d.precision, help="fp16 also writes model.fp16.onnx (default %(default)s)")
    g.add_argument("--io-fp16", action="store_true", help="fp16 graph inputs/outputs (default: fp32 I/O around an fp16 graph)")
    g.add_argument("--batch", default=str(d.batch), help="fixed batch size, or min:opt:max for a dynamic batch axis (default %(default)s)")
    g.add_argument("--opset", type=int, default=d.opset, help="ONNX opset, 17..20 (default %(default)s; TensorRT 10.3 parses <= 20)")
    g.add_argument("--out", type=Path, default=Path("artifacts"), help="directory for bundles (default %(default)s)")
    p.set_defaults(run=_build)


def _given(args) -> dict[str, str]:
    """Method parameters the user passed on the command line, unparsed."""
    return {k[len("param_"):]: v for k, v in vars(args).items() if k.startswith("param_") and v is not None}


def _parsed(method, given: dict[str, str]) -> dict:
    """`given` parsed by `method`'s parsers; names it does not know stay as text for its error."""
    parsers = {p.name: p.parse for p in method.params}
    return {k: parsers[k](v) if k in parsers else v for k, v in given.items()}


def _spec_from_args(args):
    from .methods import get_method
    from .spec import BatchRange, BuildSpec

    params = _parsed(get_method(args.method), _given(args))
    return BuildSpec(
        model=args.model,
        weights=args.weights,
        seed=args.seed,
        method=args.method,
        method_params=params,
        precision=args.precision,
        io_fp16=args.io_fp16,
        batch=BatchRange.parse(args.batch),
        img_size=args.img_size,
        opset=args.opset,
    )


def _build(args, console: Console) -> int:
    from .pipeline import build

    spec = _spec_from_args(args)
    command = "python -m exporter " + " ".join(shlex.quote(a) for a in args.argv)
    bundle = build(spec, args.out, command, console)
    console.print(f"[bold green]PASSED[/bold green] | {bundle} | {time.perf_counter() - args.start:.1f}s")
    return 0


def _add_verify(sub) -> None:
    p = sub.add_parser(
        "verify",
        help="re-check an existing bundle against PyTorch",
        description="Check a bundle's file hashes, graphs and parity against PyTorch again (e.g. after copying it); "
        "with --data, also measure its accuracy on labelled images.",
    )
    p.add_argument("bundle", type=Path, help="a directory written by `build`, e.g. artifacts/<run>")
    p.add_argument(
        "--data", type=Path, default=None, metavar="DIR",
        help="also report top-1/top-5 of PyTorch and every graph on labelled images: DIR/<class>/<image> "
        "(classes in sorted order, as torchvision's ImageFolder)",
    )
    p.set_defaults(run=_verify)


def _verify(args, console: Console) -> int:
    from .pipeline import verify

    if args.data is not None:  # a wrong folder fails before minutes of verification
        from .verify import accuracy

        accuracy.check(args.bundle, args.data)
    verify(args.bundle, console)
    if args.data is not None:
        print(accuracy.table(accuracy.measure(args.bundle, args.data, console)))
    console.print(f"[bold green]PASSED[/bold green] | {args.bundle} | {time.perf_counter() - args.start:.1f}s")
    return 0


def _add_methods(sub) -> None:
    p = sub.add_parser(
        "methods",
        help="list methods and their parameters; with --model, print the token schedule and FLOPs",
        description="List the token-reduction methods. With --model, build it with random weights, apply "
        "--method (all methods if omitted) with the given parameters and print tokens per block and GMACs.",
    )
    p.add_argument("--model", default=None, help="a timm ViT name, e.g. deit_small_patch16_224")
    p.add_argument("--method", default=None, help="only this method")
    p.add_argument("--img-size", type=int, default=None)
    for name, (param, users) in _method_params().items():
        p.add_argument(param.flag, dest=f"param_{name}", default=None, metavar="VALUE", help=f"{param.help}; {', '.join(users)}")
    p.set_defaults(run=_methods)


def _methods(args, console: Console) -> int:
    from rich.table import Table

    from .methods import apply_method, get_method, list_methods

    names = [args.method] if args.method else list_methods()
    methods = [get_method(n) for n in names]
    if args.model is None:
        table = Table("method", "parameters (default)", "what it does")
        for m in methods:
            table.add_row(m.name, "\n".join(f"{p.flag} ({p.default}): {p.help}" for p in m.params) or "—", m.summary)
        console.print(table)
        return 0
    from .methods.base import ReducedViT
    from .methods.flops import count_gmacs
    from .models import create_model, input_size

    dense = create_model(args.model, "random", 0, args.img_size)
    size = input_size(dense)
    dense_gmacs = count_gmacs(dense, size)
    table = Table("method", "parameters", "tokens leaving each block", "GMACs", "vs dense")
    for m in methods:
        params = _parsed(m, _given(args))
        if args.method is None and not set(params) <= {p.name for p in m.params}:
            params = {}  # parameters meant for another method: show this one at its defaults
        try:
            model = apply_method(dense, m.name, **params)
        except ExporterError as e:
            if args.method is not None:
                raise
            table.add_row(m.name, "—", f"[yellow]{e.problem}[/yellow]", "—", "—")
            continue
        gmacs = count_gmacs(model, size)
        schedule = model.schedule if isinstance(model, ReducedViT) else ["dense"]
        resolved = model.params if isinstance(model, ReducedViT) else m.resolve(params)
        table.add_row(
            m.name,
            ", ".join(f"{k}={v}" for k, v in resolved.items()) or "—",
            " ".join(map(str, schedule)),
            f"{gmacs:.3f}",
            f"{dense_gmacs / gmacs:.2f}x",
        )
    console.print(f"{args.model} at {size[0]}x{size[1]}: dense {dense_gmacs:.3f} GMACs")
    console.print(table)
    return 0


def _add_bench(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="onnxruntime throughput of each method vs the dense model (and vs PyTorch)",
        description="Export every method (at its default parameters) with a static batch, run them in onnxruntime "
        "and PyTorch on the CPU with the same thread settings, interleaved, and print measured speedups next to "
        "FLOPs ratios and the share of time spent in the token-reduction machinery and size bias.",
    )
    p.add_argument("--model", default="deit_small_patch16_224")
    p.add_argument("--weights", default="random", help="timing does not depend on the weights (default %(default)s)")
    p.add_argument("--methods", default=None, help="comma-separated (default: all, dense first)")
    p.add_argument("--img-size", type=int, default=None)
    p.add_argument("--batch", type=int, default=8, help="default %(default)s")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads for onnxruntime and PyTorch (default %(default)s)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds; medians are reported (default %(default)s)")
    p.add_argument("--iterations", type=int, default=5, help="batches per method per round (default %(default)s)")
    p.set_defaults(run=_bench)


def _bench(args, console: Console) -> int:
    from .bench import throughput
    from .models import create_model, input_size

    methods = throughput.selected_methods(args.methods)
    dense = create_model(args.model, args.weights, 0, args.img_size)
    size = input_size(dense)
    results = throughput.run(dense, methods, size, args.batch, args.threads, args.rounds, args.iterations, log=console.print)
    print(f"{args.model}, batch {args.batch}, {args.threads} threads, onnxruntime CPU, medians of {args.rounds} rounds x {args.iterations} batches\n")
    print(throughput.table(results, args.batch))
    print("\n" + throughput.profile_note(results))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m exporter",
        description="Token-reduction Vision Transformers to verified ONNX / TensorRT deployment bundles.",
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_build(sub)
    _add_verify(sub)
    _add_methods(sub)
    _add_bench(sub)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    args.argv = argv
    console = Console(stderr=True, highlight=False)
    start = args.start = time.perf_counter()
    from .pipeline import BuildFailed

    try:
        return args.run(args, console)
    except ExporterError as e:
        if args.debug:
            raise
        console.print(f"[bold red]error:[/bold red] {e.problem}")
        if e.fix:
            console.print(f"  [bold]fix:[/bold] {e.fix}")
        return EXIT_USAGE
    except BuildFailed as e:
        if args.debug:
            raise
        console.print(str(e), markup=False)
        console.print(f"[bold red]FAILED[/bold red] | {e.where} | {time.perf_counter() - start:.1f}s")
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
