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

import onnx

from .. import artifacts
from ..errors import ExporterError

GRAPHS = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "plugins": "model.plugins.onnx",
          "plugins-fp16": "model.plugins.fp16.onnx"}
PLUGIN_LIBRARY = "plugins/libexporter_plugins.so"
ENGINE_JSON = "engine.json"


def engines_dir(bundle: Path) -> Path:
    return bundle / artifacts.ENGINES_DIR


def graph_path(bundle: Path, choice: Optional[str]) -> Path:
    """The ONNX file for --graph (default: fp16 if the bundle has it, else fp32), or a usage error."""
    if choice is None:
        choice = "fp16" if (bundle / GRAPHS["fp16"]).is_file() else "fp32"
    if choice not in GRAPHS:
        raise ExporterError(f"--graph '{choice}' is not one of {', '.join(GRAPHS)}.",
                            "Use --graph fp16 (the deployment graph), fp32, plugins or plugins-fp16.")
    path = bundle / GRAPHS[choice]
    if not path.is_file():
        how = {
            "fp16": "rebuild it with `python -m exporter build ... --precision fp16`, or pass --graph fp32",
            "fp32": "rebuild the bundle with `python -m exporter build`",
            "plugins": "rebuild it with `python -m exporter build ... --plugins`, or pass --graph fp16",
            "plugins-fp16": "rebuild it with `python -m exporter build ... --plugins --precision fp16`, or pass --graph fp16",
        }[choice]
        raise ExporterError(f"{bundle} has no {path.name} (the --graph {choice} graph).", how[0].upper() + how[1:] + ".")
    return path


def precision_of(graph: Path) -> str:
    return "fp16" if graph.name.endswith(".fp16.onnx") else "fp32"


def has_plugins(graph: Path) -> bool:
    """A plugin graph: its engine needs the bundle's plugin library."""
    return graph.name in (GRAPHS["plugins"], GRAPHS["plugins-fp16"])


def graph_files(graph: Path, model: Optional[onnx.ModelProto] = None) -> list[Path]:
    """The graph and the external weight files it references (they are part of its content); `model` is the
    graph already loaded, if it is."""
    model = model or onnx.load(str(graph), load_external_data=False)
    locations = {
        entry.value
        for tensor in model.graph.initializer
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }
    return [graph] + [graph.parent / loc for loc in sorted(locations)]


def graph_sha256(graph: Path) -> str:
    """One digest over the graph file and its weight files (names and contents)."""
    h = hashlib.sha256()
    for path in graph_files(graph):
        if not path.is_file():
            raise ExporterError(f"{graph.name} references weights {path.name}, which is missing from {graph.parent}.",
                                "Copy the whole bundle directory, or rebuild it with `python -m exporter build`.")
        h.update(path.name.encode() + b"\0" + artifacts.sha256(path).encode())
    return h.hexdigest()


def key(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


# the fields of an engine entry that lookups, pre-flight checks, reports and bench read (the rest is informative)
ENTRY_FIELDS = ("engine", "graph", "key", "key_fields", "runtime", "runtime_version", "target", "gpu", "sha256")


def read_folder(folder: Path) -> dict:
    """engine.json of an engine folder ({'entries': {graph file: entry}}); empty when absent, an ExporterError
    when damaged (not JSON, or not entries with every field in ENTRY_FIELDS)."""
    path = folder / ENGINE_JSON
    if not path.is_file():
        return {"entries": {}}
    try:
        data = artifacts.read_json(path)
    except ValueError:
        what = "is not valid JSON"
    else:
        entries = data.get("entries") if isinstance(data, dict) else None
        if not isinstance(entries, dict) or not all(isinstance(e, dict) for e in entries.values()):
            what = "holds no {graph file: engine entry} table under 'entries'"
        else:
            lacking = sorted({f"{g} lacks {f}" for g, e in entries.items() for f in ENTRY_FIELDS if f not in e})
            what = f"is damaged ({'; '.join(lacking)})" if lacking else None
    if what:
        raise ExporterError(f"{path} {what}.", f"Delete {folder} and rebuild its engines with `python -m exporter engine`.")
    return data


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


def write_entry(folder: Path, graph: str, entry: dict) -> None:
    data = read_folder(folder)
    data["entries"][graph] = entry
    artifacts.write_json(folder / ENGINE_JSON, data)


def lookup(folder: Path, graph: str, wanted_key: str) -> Optional[dict]:
    """The entry if its engine was built with `wanted_key` and the plan file is intact, else None."""
    entry = read_folder(folder)["entries"].get(graph)
    if not entry or entry.get("key") != wanted_key:
        return None
    plan = folder / entry["engine"]
    if not plan.is_file() or artifacts.sha256(plan) != entry.get("sha256"):
        return None
    return entry


def all_entries(bundle: Path) -> list[tuple[str, dict]]:
    """(folder name, entry) for every engine recorded in the bundle."""
    root = engines_dir(bundle)
    if not root.is_dir():
        return []
    return [(f.name, e) for f in sorted(root.iterdir()) if f.is_dir() for e in read_folder(f)["entries"].values()]
