# SPDX-License-Identifier: Apache-2.0
"""The engines index: engines/<target>-<runtime>/engine.json, one entry per graph, and the graph content an
engine is keyed by (the graph file and the external weight files it references).

Engines are added on a target after the build, so engines/ lies outside the manifest's file hashes; each folder's
engine.json records its plans' sha256 instead (`exporter.engine.cache` decides when an entry is reused).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

import onnx

from ..errors import ExporterError
from .files import read_json, sha256, write_json
from .layout import ENGINE_JSON, ENGINES_DIR


def engines_dir(bundle: Path) -> Path:
    return bundle / ENGINES_DIR


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
        h.update(path.name.encode() + b"\0" + sha256(path).encode())
    return h.hexdigest()


# the fields of an engine entry that lookups, pre-flight checks, reports and bench read (the rest is informative)
ENTRY_FIELDS = ("engine", "graph", "key", "key_fields", "runtime", "runtime_version", "target", "gpu", "sha256")


def read_folder(folder: Path) -> dict:
    """engine.json of an engine folder ({'entries': {graph file: entry}}); empty when absent, an ExporterError
    when damaged (not JSON, or not entries with every field in ENTRY_FIELDS)."""
    path = folder / ENGINE_JSON
    if not path.is_file():
        return {"entries": {}}
    try:
        data = read_json(path)
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


def write_entry(folder: Path, graph: str, entry: dict) -> None:
    data = read_folder(folder)
    data["entries"][graph] = entry
    write_json(folder / ENGINE_JSON, data)


def all_entries(bundle: Path) -> list[tuple[str, dict]]:
    """(folder name, entry) for every engine recorded in the bundle."""
    root = engines_dir(bundle)
    if not root.is_dir():
        return []
    return [(f.name, e) for f in sorted(root.iterdir()) if f.is_dir() for e in read_folder(f)["entries"].values()]
