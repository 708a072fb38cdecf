# SPDX-License-Identifier: Apache-2.0
"""The compiled kernel variants, cached one cubin at a time by content.

A cubin depends on its variant (kernel, token dtype, aligned), its architecture, the Triton version (its
compiler and bundled ptxas) and the sources that define and compile the kernels (`SOURCES`). Each is
stored under exactly that key, in `$XDG_CACHE_HOME/exporter/cubins/<sources and Triton>/<variant>-sm<arch>.json`,
so a library needing other ops, dtypes or architectures compiles only the cubins it has not met, and a
change to a kernel's source recompiles everything (the key does not try to tell which kernels it touched).
`compile_all` is a drop-in for `exporter.ops.aot.compile_all` (the library's cubins: no line tables).
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Optional

from . import aot
from .kernels import config

OPS_DIR = Path(__file__).resolve().parent
# What a cubin is made from: the kernels' Triton sources, their table, and the compile step (aot.py).
SOURCES = ("aot.py", "kernels/*.py")


def sources_digest(root: Path = OPS_DIR) -> str:
    """A hash of the Triton version and of every file of `SOURCES` under `root` (name and content)."""
    import triton

    digest = hashlib.sha256(f"triton {triton.__version__}\n".encode())
    for path in sorted(p for pattern in SOURCES for p in root.glob(pattern)):
        digest.update(f"{path.relative_to(root).as_posix()}\n".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def default_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "exporter" / "cubins"


def entry(key: tuple, digest: str, cache_dir: Path) -> Path:
    """The file of `key` (the arguments of `aot.compile_variant`: kernel, dtype, aligned, arch)."""
    kernel, dtype, aligned, arch = key
    return cache_dir / digest / f"{kernel}-{dtype or 'any'}-{'aligned' if aligned else 'generic'}-sm{arch}.json"


def compile_all(keys: list[tuple], jobs: int = 0, cache_dir: Optional[Path] = None) -> list[dict]:
    """`aot.compile_all(keys, jobs)`, each result read from the cache (`cache_dir`, default `default_dir()`)
    when there, else compiled (the misses together, in `jobs` processes) and stored."""
    cache_dir = Path(cache_dir) if cache_dir else default_dir()
    digest = sources_digest()
    results = {key: _load(entry(key, digest, cache_dir)) for key in dict.fromkeys(keys)}
    missing = [key for key, found in results.items() if found is None]
    if missing:
        for key, compiled in zip(missing, aot.compile_all(missing, jobs)):
            _store(compiled, entry(key, digest, cache_dir))
            results[key] = compiled
    return [results[key] for key in keys]


def _load(path: Path) -> Optional[dict]:
    """The cached `aot.compile_variant` result, or None (absent, or not a whole entry)."""
    try:
        stored = json.loads(path.read_text())
        stored["cubin"] = base64.b64decode(stored["cubin"], validate=True)
        stored["variant"] = config.Variant(stored["kernel"], stored["dtype"], stored["aligned"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return stored if stored["cubin"].startswith(b"\x7fELF") else None


def _store(compiled: dict, path: Path) -> None:
    """Write atomically: a concurrent build reads the whole entry or none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({**{k: v for k, v in compiled.items() if k != "variant"},
                       "cubin": base64.b64encode(compiled["cubin"]).decode("ascii")})
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=".writing-", delete=False) as tmp:
        tmp.write(text)
    os.replace(tmp.name, path)
