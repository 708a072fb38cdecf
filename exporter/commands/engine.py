# SPDX-License-Identifier: Apache-2.0
"""`python -m exporter engine BUNDLE`: build (or reuse) a TensorRT / TensorRT-RTX engine from a bundle's graph
into engines/<target>-<runtime>/ (the builder is `exporter.engine.build`)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from rich.console import Console

from ..bundle import sweep_stale
from ..bundle.trust import vouch
from ..console import inert
from ..engine.build import EngineResult, build_engine


def engine(bundle: Path, graph: Optional[str], runtime: str, target: Optional[str], force: bool,
           console: Console, trusted_keys: Sequence[Path] = (), trust_plugins: bool = False) -> EngineResult:
    """The engine, built or found in the cache; one line says which, where and why. A plugin graph's engine loads
    the bundle's plugin library: only when its signature verified with one of `trusted_keys`, or `trust_plugins`."""
    sweep_stale()  # a killed run's TensorRT-RTX folders
    vouch(bundle, trusted_keys, trust_plugins)
    result = build_engine(bundle, graph, runtime, target, force, console)
    e = result.entry
    state = "cache hit" if result.cache_hit else f"cache miss ({result.why}), built in {e['build_seconds']:.1f}s"
    console.print(inert(f"{state}: {result.folder / e['engine']} ({e['bytes'] / 1e6:.1f} MB, key {e['key'][:12]})"), markup=False)
    return result
