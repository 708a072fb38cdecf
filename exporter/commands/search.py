# SPDX-License-Identifier: Apache-2.0
"""`python -m exporter search --method diffrate`: learn DiffRate's per-block counts for a frozen model and a budget
(`exporter.methods.diffrate_search`), write the schedule file (`exporter.methods.schedule`), and compare it with a
uniform schedule of the same cost and the published DeiT-S schedule scaled to the model, on the search images and
on held-out ones: real (counted) GMACs and top-1 of each. The cost is counted GMACs (`--target-flops`), or latency
(`--target-latency-ms`): one block measured per token count on the runtime (`bench.block_latency`) and fitted
(`methods.latency_cost`), the table stored in the schedule file.
"""
from __future__ import annotations

import contextlib
import shlex
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..errors import ExporterError
from ..methods import apply_method
from ..methods import schedule as schedule_file
from ..methods.base import check_vit
from ..methods.diffrate import published
from ..methods.diffrate_search import Progress as Step
from ..methods.diffrate_search import SearchViT, Settings, flops_cost, search, uniform
from ..methods.latency_cost import latency_cost
from ..methods.flops import count_gmacs
from ..models import create_model, input_size

DEIT_S_PATCHES = 196  # the published DeiT-S schedules' patch tokens (224 / 16)


@dataclass
class Images:
    """Preprocessed images and their labels, and where they came from."""

    x: torch.Tensor
    y: torch.Tensor
    data: str


@dataclass
class Row:
    """One schedule of the comparison."""

    name: str
    prune_kept: list[int]
    merge_kept: list[int]
    tokens: list[int]
    gmacs: float
    cost: float  # in the budget's unit (GMACs counted, or the fitted latency in ms)
    top1: float
    held_out: Optional[float]


def load_images(folder: Path, dense: torch.nn.Module, limit: Optional[int], seed: int) -> Images:
    """Up to `limit` images of an ImageNet-layout folder (a seeded choice when it has more), through the model's
    eval transform."""
    from timm.data import create_transform, resolve_data_config

    from ..verify.accuracy import open_folder

    dataset = open_folder(folder, dense.num_classes)
    dataset.transform = create_transform(**resolve_data_config({"input_size": (3, *input_size(dense))}, model=dense))
    rows = range(len(dataset))
    if limit is not None and limit < len(dataset):
        rows = sorted(torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:limit].tolist())
    pairs = [dataset[i] for i in rows]
    return Images(torch.stack([x for x, _ in pairs]), torch.tensor([y for _, y in pairs]), str(folder))


def top1(model: torch.nn.Module, images: Images) -> float:
    """Percent of `images` whose argmax is the label."""
    with torch.no_grad():
        predicted = torch.cat([model(chunk).argmax(-1) for chunk in images.x.split(128)])
    return 100.0 * float((predicted == images.y).float().mean())


def scaled_published(tokens: int, depth: int, cost, target: float) -> Optional[tuple[str, list[int], list[int]]]:
    """The published DeiT-S schedule whose scaled cost is closest to `target`, its counts scaled from 196 patches
    to the model's (round((c - 1) * patches / 196) + 1, as the digits fixture's rows): (name, prune, merge), or
    None for a model of another depth."""
    if depth != 12:
        return None
    patches = tokens - 1
    choices = []
    for flops, (prune, merge) in published()["ViT-S-DeiT"].items():
        prune = prune or (DEIT_S_PATCHES + 1,) * depth
        scale = [[round((c - 1) * patches / DEIT_S_PATCHES) + 1 for c in counts] for counts in (prune, merge)]
        choices.append((f"DeiT-S {flops} GFLOPs, scaled", *scale))
    return min(choices, key=lambda c: abs(cost(c[1], c[2]) - target))


def run(args, console: Console, out: Console) -> Path:
    """The command: search, write the schedule file, print the comparison; returns the file's path."""
    if args.method != "diffrate":
        raise ExporterError(f"search --method {args.method}: only DiffRate learns its schedule.",
                            "Pass --method diffrate (the other methods take their rates as parameters).")
    for name in ("epochs", "batch_size", "granularity", "batch", "threads"):
        if getattr(args, name) < 1:
            raise ExporterError(f"--{name.replace('_', '-')} {getattr(args, name)} must be at least 1.", "Pass a positive number.")
    dense = create_model(args.model, args.weights, args.seed, args.img_size)
    check_vit(dense)
    latency = None
    if args.target_latency_ms is not None:
        from ..bench.block_latency import measure

        if args.runtime == "pytorch-cuda-graph" and not torch.cuda.is_available():
            raise ExporterError("--runtime pytorch-cuda-graph measures the latency on a CUDA GPU, and this machine has none "
                                "that PyTorch can use.",
                                "Run the search on the GPU machine, or measure on the CPU: --runtime onnxruntime or pytorch.")
        console.print(f"measuring one block of {args.model} per token count on {args.runtime}, batch {args.batch}, "
                      f"{args.threads} threads")
        latency = measure(dense, args.batch, args.threads, log=lambda _: None, runtime=args.runtime)
        if latency.scale <= 0:
            raise ExporterError(
                f"{args.model} measured {latency.dense_ms:.2f} ms dense and {latency.halving_ms:.2f} ms with about "
                f"half its tokens on {args.runtime} (batch {args.batch}, {args.threads} threads): its latency does not "
                "fall with its tokens on this machine now, so a latency budget has nothing to search.",
                "Measure on a quieter machine, or search a FLOPs budget (--target-flops).")
        cost, constant = latency_cost(latency)
        target, flag = args.target_latency_ms, "--target-latency-ms"
    else:
        cost, constant = flops_cost(dense)
        target, flag = args.target_flops, "--target-flops"
    unit = cost.unit
    model = SearchViT(dense, cost, constant, args.granularity)
    tokens, depth = model.tokens, len(dense.blocks)

    schedule_cost = model.cost_of
    dense_cost = schedule_cost([tokens] * depth, [tokens] * depth)
    smallest = schedule_cost([tokens] + [args.granularity + 1] * (depth - 1), [tokens] + [args.granularity + 1] * (depth - 1))
    if not smallest < target < dense_cost:
        raise ExporterError(
            f"{flag} {target} lies outside what DiffRate can reach on {args.model}: "
            f"{smallest:.4f} {unit} (every block after the first keeping {args.granularity + 1} tokens) to "
            f"{dense_cost:.4f} (dense).",
            f"Pass a budget between {smallest:.4f} and {dense_cost:.4f} {unit}.",
        )
    data = load_images(args.data, dense, args.images, args.seed)
    held_out = load_images(args.eval_data, dense, None, args.seed) if args.eval_data else None
    settings = Settings(target, unit, args.epochs, args.batch_size, args.lr, args.min_lr, args.penalty,
                        args.granularity, args.seed, args.start_rates)
    with progress(console, unit) as report:
        prune, merge, _ = search(model, data.x, data.y, settings, args.checkpoint, report)

    def row(name: str, prune, merge) -> Row:
        return _row(name, dense, prune, merge, schedule_cost(prune, merge), data, held_out)

    rows = [row("searched", prune, merge), row("uniform, same cost", *uniform(tokens, depth, schedule_cost, target))]
    scaled = scaled_published(tokens, depth, schedule_cost, target)
    if scaled is not None:
        rows.append(row(*scaled))
    dense_row = Row("dense", [tokens] * depth, [tokens] * depth, [tokens] * depth, count_gmacs(dense, input_size(dense)),
                    dense_cost, top1(dense, data), top1(dense, held_out) if held_out else None)
    searched = rows[0]
    path = args.out or Path("schedules") / f"{args.model}-diffrate-{target:g}{unit.lower()}.json"
    record = {
        "model": schedule_file.model_name(dense), "img_size": list(input_size(dense)), "tokens": tokens, "depth": depth,
        "weights": args.weights, "weights_sha256": schedule_file.weights_sha256(dense),
        "budget": {"unit": unit, "target": target},
        "prune_kept": prune, "merge_kept": merge, "tokens_after": searched.tokens,
        "gmacs": searched.gmacs, "dense_gmacs": dense_row.gmacs,
        **({} if latency is None else {"latency_ms": searched.cost, "dense_latency_ms": dense_cost,
                                       "latency": latency.record()}),
        "accuracy": {"data": data.data, "images": len(data.y), "top1": searched.top1, "dense_top1": dense_row.top1},
        "held_out": None if held_out is None else {
            "data": held_out.data, "images": len(held_out.y), "top1": searched.held_out, "dense_top1": dense_row.held_out},
        "settings": asdict(settings), "seed": args.seed,
        "comparison": [asdict(r) for r in [dense_row, *rows]],
        "command": "python -m exporter " + " ".join(shlex.quote(a) for a in args.argv),
    }
    schedule_file.write(path, record)
    out.print(_table(dense_row, rows, target, unit, held_out is not None))
    return path


LINES = 20  # progress lines a search prints when its output is not a terminal (a CI log, `| tee`)


@contextlib.contextmanager
def progress(console: Console, unit: str) -> Iterator[Callable[[Step], None]]:
    """The search's progress: a bar with loss, cost and top-1 on a terminal; elsewhere the same numbers as a plain line
    every 1/LINES of the steps and at the last one (a bar redrawn in place is nothing in a log until it ends)."""
    def numbers(p: Step) -> str:
        return f"loss {p.loss:.3f}  cost {p.cost:.4f} {unit}  top-1 {100 * p.top1:.1f}%"

    if not console.is_terminal:
        start = time.perf_counter()

        def line(p: Step) -> None:
            if p.step % max(1, p.steps // LINES) == 0 or p.step == p.steps:
                console.print(f"search step {p.step}/{p.steps}  {numbers(p)}  ({time.perf_counter() - start:.0f}s)",
                              markup=False)

        yield line
        return
    columns = (TextColumn("search"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[line]}"),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("search", total=None, line="")
        yield lambda p: bar.update(task, total=p.steps, completed=p.step, line=numbers(p))


def _row(name: str, dense, prune, merge, cost: float, data: Images, held_out: Optional[Images]) -> Row:
    reduced = apply_method(dense, "diffrate", prune_kept=prune, merge_kept=merge)
    return Row(name, list(prune), list(merge), list(reduced.schedule), count_gmacs(reduced, input_size(dense)), cost,
               top1(reduced, data), top1(reduced, held_out) if held_out else None)


def _table(dense: Row, rows: list[Row], target: float, unit: str, held: bool) -> Table:
    fitted = unit != "GMACs"
    table = Table("schedule", "tokens leaving each block", "GMACs", *([f"fitted {unit}"] if fitted else []),
                  "vs target", "top-1 search data", *(["top-1 held out"] if held else []),
                  title=f"DiffRate schedules at {target:g} {unit}")
    for r in [dense, *rows]:
        table.add_row(r.name, " ".join(map(str, r.tokens)), f"{r.gmacs:.4f}", *([f"{r.cost:.3f}"] if fitted else []),
                      f"{100 * (r.cost / target - 1):+.1f}%", f"{r.top1:.2f}", *([f"{r.held_out:.2f}"] if held else []))
    return table
