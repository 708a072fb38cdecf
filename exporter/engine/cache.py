# SPDX-License-Identifier: Apache-2.0
"""Engines cached by content, and the manifest of each engine folder.

`engines/<target>-<runtime>/engine.json` holds one entry per graph: what the engine was built from
(the cache key's fields), with what (runtime, version, GPU, flags), how long it took and the plan's
sha256. An engine is reused only when the key computed now equals the stored one and the plan file
still has its recorded sha256; anything else is a miss and is rebuilt.

The key covers: the sha256 of the ONNX graph and its weight files, of the plugin library (when the
plugin graph is built), the graph's precision, the batch profile and input shape, the runtime and
its version, the compute capability, and the builder flags.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import Iterator, Optional

from ..bundle import read_folder, sha256


def key(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


@contextlib.contextmanager
def locked(folder: Path, console) -> Iterator[None]:
    """Builds into one engine folder run one at a time (an exclusive flock on the folder, released when the process
    ends however it ends): engine.json's read-modify-write and a plan's temp file are never shared, and a second
    build of the same engine finds it cached. Creates the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            console.print(f"waiting for another engine build into {folder} to finish ...", markup=False)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def lookup(folder: Path, graph: str, wanted_key: str) -> Optional[dict]:
    """The entry if its engine was built with `wanted_key` and the plan file is intact, else None."""
    entry = read_folder(folder)["entries"].get(graph)
    if not entry or entry.get("key") != wanted_key:
        return None
    plan = folder / entry["engine"]
    if plan.is_symlink() or not plan.is_file() or sha256(plan) != entry.get("sha256"):
        return None
    return entry
