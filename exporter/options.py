"""Command-line values checked before any work starts, so a typo costs a sentence, not a traceback."""
from __future__ import annotations

from typing import Any, Callable, Optional

from .errors import ExporterError


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
