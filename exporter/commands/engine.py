# SPDX-License-Identifier: Apache-2.0
"""`python -m exporter engine BUNDLE`: build (or reuse) a TensorRT / TensorRT-RTX engine from a bundle's graph
into engines/<target>-<runtime>/ (the builder is `exporter.engine.build`)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from rich.console import Console

from ..console import inert
from ..engine.build import EngineResult, build_engine


def engine(bundle: Path, graph: Optional[str], runtime: str, target: Optional[str], force: bool,
           console: Console) -> EngineResult:
    """The engine, built or found in the cache; one line says which, where and why."""
    result = build_engine(bundle, graph, runtime, target, force, console)
    e = result.entry
    state = "cache hit" if result.cache_hit else f"cache miss ({result.why}), built in {e['build_seconds']:.1f}s"
    console.print(inert(f"{state}: {result.folder / e['engine']} ({e['bytes'] / 1e6:.1f} MB, key {e['key'][:12]})"), markup=False)
    return result
