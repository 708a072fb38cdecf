# SPDX-License-Identifier: Apache-2.0
"""Command-line values checked before any work starts, so a typo costs a sentence, not a traceback; and the
build's flags, which make a BuildSpec: the CLI adds them to its `build` command, and a bundle's consistency check
reads a recorded build command back into the spec it builds with the same definitions.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import shlex
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Optional

from .errors import ExporterError
from .methods import get_method, list_methods
from .methods.base import REGISTRY
from .ops import library
from .spec import CALIB_SAMPLES, PRECISIONS, BatchRange, BuildSpec

CLI = "python -m exporter "  # how a recorded command begins


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def parse_param(name: str, parse: Callable[[str], Any], text: str) -> Any:
    """`parse(text)` for method parameter `name`; every failure names the flag and the value."""
    try:
        return parse(text)
    except ExporterError as e:
        if flag(name) in e.problem:
            raise
        quoted = e.problem.startswith("'")  # "'maybe' is not a boolean." -> "--fuse 'maybe' is not a boolean."
        raise ExporterError(f"{flag(name)} {e.problem}" if quoted else f"{flag(name)} {text!r}: {e.problem}", e.fix) from None
    except (ValueError, TypeError):
        kind = "a number" if parse in (float, int) else "a valid value"
        example = " (e.g. 0.7)" if parse is float else " (e.g. 3)" if parse is int else ""
        raise ExporterError(
            f"{flag(name)} {text!r} is not {kind}.",
            f"Pass {flag(name)} {kind}{example}; `python -m exporter methods` lists each parameter.",
        ) from None


def check_bench_args(args) -> Optional[list[int]]:
    """bench's counts must be positive: 0 would reach torch.export, statistics or the thread pool. Returns the
    --batch sizes (None when not given)."""
    counts = {"threads": "intra-op threads", "rounds": "interleaved rounds", "iterations": "batches per round"}
    for name, what in counts.items():
        value = getattr(args, name)
        if value < 1:
            raise ExporterError(
                f"--{name} {value} is not a positive number of {what}.",
                f"Pass --{name} 1 or more (default: see `python -m exporter bench --help`).",
            )
    if args.batch is None:
        return None
    try:
        sizes = [int(part) for part in args.batch.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise ExporterError(f"--batch {args.batch} is not a positive number of images per batch, or a comma-separated "
                            "list of them.",
                            "Pass e.g. --batch 8, or --batch 1,8,32 with bundles.")
    return sizes


def method_params() -> dict:
    """Every method parameter once: name -> (parameter, ["<method> (default <value>)", ...])."""
    seen = {}
    for method in REGISTRY.values():
        for p in method.params:
            entry = seen.setdefault(p.name, (p, []))
            entry[1].append(f"{method.name} (default {p.default})")
    return seen


def add_method_params(parser) -> None:
    """One --flag per method parameter (dest param_<name>), unparsed: `given_params` collects them."""
    for name, (param, users) in method_params().items():
        parser.add_argument(param.flag, dest=f"param_{name}", default=None, metavar="VALUE",
                            help=f"{param.help}; {', '.join(users)}")


def add_build_arguments(p: argparse.ArgumentParser) -> None:
    """The build command's flags: the spec's fields, --out and --sign."""
    d = BuildSpec()
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
    add_method_params(p.add_argument_group("method parameters (see `python -m exporter methods`)"))
    g = p.add_argument_group("export")
    g.add_argument("--precision", choices=PRECISIONS, default=d.precision, help="fp16 also writes model.fp16.onnx; int8/fp8 also model.fp16.onnx and model.int8.onnx/model.fp8.onnx, "
                   "calibrated on --calib (default %(default)s)")
    g.add_argument("--calib", default=None, metavar="DIR",
                   help="int8/fp8: calibration images, one sub-folder per class (the layout of `verify --data`); the images "
                   "not calibrated on are the held-out set the 8-bit graph's accuracy is checked on")
    g.add_argument("--calib-samples", type=int, default=CALIB_SAMPLES, metavar="N",
                   help="int8/fp8: images calibrated on, drawn seeded by --seed (default %(default)s)")
    g.add_argument("--io-fp16", action="store_true", help="fp16 graph inputs/outputs (default: fp32 I/O around an fp16 graph)")
    g.add_argument("--batch", default=str(d.batch), help="fixed batch size, or min:opt:max for a dynamic batch axis (default %(default)s)")
    g.add_argument(
        "--plugins",
        action="store_true",
        help="also write model.plugins.onnx (each token op one TensorRT plugin node) and build the plugin library",
    )
    g.add_argument("--archs", default=None, metavar="80,87,90",
                   help="with --plugins: the GPU architectures (compute capability x10) the plugin library's kernels "
                   "are compiled for (default: 80, 86, 87, 89, 90, 100, 120: Ampere, Jetson Orin, Ada, Hopper, Blackwell)")
    g.add_argument("--opset", type=int, default=d.opset, help="ONNX opset, 17..20 (default %(default)s; TensorRT 10.3 parses <= 20)")
    g.add_argument("--out", type=Path, default=Path("artifacts"), help="directory for bundles (default %(default)s)")
    g.add_argument("--sign", type=Path, default=None, metavar="KEY",
                   help="sign the bundle at the end with this private key (PEM, elliptic curve), as `sign` does")


def given_params(args) -> dict[str, str]:
    """Method parameters the user passed on the command line, unparsed."""
    return {k[len("param_"):]: v for k, v in vars(args).items() if k.startswith("param_") and v is not None}


def parsed_params(method, given: dict[str, str], parsers: Optional[dict[str, Callable[[str], Any]]] = None) -> dict:
    """`given` parsed by `method`'s parsers (or those of `parsers`, by name); names it does not know stay as text for
    its error."""
    parsers = {**{p.name: p.parse for p in method.params}, **(parsers or {})}
    return {k: parse_param(k, parsers[k], v) if k in parsers else v for k, v in given.items()}


def spec_from_args(args, parsers: Optional[dict[str, Callable[[str], Any]]] = None) -> BuildSpec:
    """The spec of parsed build flags (`add_build_arguments`); `parsers` replace method parameters' own."""
    params = parsed_params(get_method(args.method), given_params(args), parsers)
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
        plugins=args.plugins,
        archs=_archs(args.archs),
        calib=args.calib,
        calib_samples=args.calib_samples,
    )


def _archs(text: Optional[str]) -> Optional[tuple[int, ...]]:
    """--archs 87,90 -> (87, 90), checked against what the kernel compiler can build."""
    if text is None:
        return None
    parts = [a.strip().removeprefix("sm_").removeprefix("sm") for a in text.split(",")]
    if not all(p.isdigit() for p in parts):
        raise ExporterError(f"--archs {text!r} is not a list of compute capabilities.", "e.g. --archs 87,90 (sm_87, sm_90)")
    return library.checked_archs([int(p) for p in parts])


def resolve(spec: BuildSpec) -> BuildSpec:
    """The spec with the method's defaults filled in, so the manifest and the hash say everything."""
    return replace(spec, method_params=get_method(spec.method).resolve(spec.method_params))


def spec_of_command(command: str, parsers: Optional[dict[str, Callable[[str], Any]]] = None) -> Optional[BuildSpec]:
    """The (resolved) spec a recorded `python -m exporter build ...` builds, or None if it builds none. `parsers`
    replace method parameters' own: a parameter naming a file the bundle keeps a copy of is read from the copy."""
    if not command.startswith(CLI):
        return None
    words = shlex.split(command[len(CLI):])
    words = [w for w in words if w != "--debug"]  # accepted before and after the command, changes no spec
    if words[:1] != ["build"]:
        return None
    parser = argparse.ArgumentParser(prog=CLI + "build", add_help=False)
    add_build_arguments(parser)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            args = parser.parse_args(words[1:])
        return resolve(spec_from_args(args, parsers))
    except (SystemExit, ValueError, ExporterError):
        return None
