# SPDX-License-Identifier: Apache-2.0
"""`python -m exporter bench`: with bundles, every runtime that can run them here, timed into their bench/ folders;
without, every method of every --models model exported here and timed side by side (`exporter.bench`)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import onnxruntime
from rich.console import Console

from ..bench import bundles, results, throughput
from ..bundle import bench_folder
from ..bundle.trust import vouch
from ..console import inert
from ..errors import ExporterError
from ..models import create_model, input_size


def bench_bundles(paths: list[Path], batches: Optional[list[int]], threads: int, rounds: int, iterations: int,
                  console: Console, trusted_keys: Sequence[Path] = (), trust_plugins: bool = False) -> list[Path]:
    """Time the bundles, print the table; the bench folders written. Engines of plugin graphs run (loading the
    bundle's plugin library) only for bundles signed by one of `trusted_keys`, or with `trust_plugins`."""
    for p in paths:
        vouch(p, trusted_keys, trust_plugins)
    data = bundles.run(paths, batches, threads, rounds, iterations,
                       log=lambda line: console.print(inert(line), markup=False))
    print(inert(results.markdown(data), lines=True))
    return [bench_folder(p) for p in paths]


def bench_models(models_text: str, weights: str, methods_text: Optional[str], img_size: Optional[int], batch: int,
                 threads: int, rounds: int, iterations: int, console: Console) -> None:
    """Export every method of every model (`models_text`: comma-separated, variants as name(arg=value)) and print
    measured speedups next to FLOPs ratios."""
    methods = throughput.selected_methods(methods_text)
    models = {}
    for label, (name, kwargs) in throughput.parse_models(models_text).items():
        models[label] = create_model(name, weights, 0, img_size, **kwargs)
    sizes = {label: input_size(m) for label, m in models.items()}
    if len(set(sizes.values())) > 1:
        raise ExporterError(f"The models take different input sizes: {sizes}.", "Pass --img-size for all of them.")
    size = next(iter(sizes.values()))
    measured = throughput.run(models, methods, size, batch, threads, rounds, iterations, log=console.print)
    print(f"{models_text}, batch {batch}, {size[0]}x{size[1]}, {threads} threads, onnxruntime "
          f"{onnxruntime.__version__} CPU, fp32, medians of {rounds} rounds x {iterations} batches\n")
    print(throughput.table(measured, batch))
    for note in (throughput.lone_note(measured), throughput.profile_note(measured)):
        if note:
            print("\n" + note)
