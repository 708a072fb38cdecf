# SPDX-License-Identifier: Apache-2.0
"""The engines index: engines/<target>-<runtime>/engine.json, one entry per graph, and the graph content an
engine is keyed by (the graph file and the external weight files it references).

Engines are added on a target after the build, so engines/ lies outside the manifest's file hashes; each folder's
engine.json records its plans' sha256 instead (`exporter.engine.cache` decides when an entry is reused).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Optional

import onnx

from ..errors import ExporterError
from .files import DAMAGED, inside, read_inside, read_json, sha256, write_json
from .layout import ENGINE_JSON, ENGINES_DIR, GRAPHS, RUNTIMES


def engines_dir(bundle: Path) -> Path:
    return bundle / ENGINES_DIR


def load_graph(path: Path, root: Optional[Path] = None) -> onnx.ModelProto:
    """An ONNX graph of a bundle without its weights, read through the bounded reader (a regular file inside `root`,
    default its folder), its external-data locations checked to stay inside (`graph_files`); a file that is not ONNX
    is an ExporterError."""
    try:
        model = onnx.load_model_from_string(read_inside(path, root, "graph"))
    except ExporterError:
        raise
    except Exception as e:  # protobuf's DecodeError for a truncated or foreign file
        raise ExporterError(f"{path} cannot be read as ONNX ({type(e).__name__}: {e}).", DAMAGED) from None
    graph_files(path, model, root)
    return model


def graph_files(graph: Path, model: Optional[onnx.ModelProto] = None, root: Optional[Path] = None) -> list[Path]:
    """The graph and the external weight files it references (they are part of its content); `model` is the
    graph already loaded, if it is. A location that leaves `root` (default: the graph's folder; an absolute path,
    '..') is an ExporterError before anything opens it: onnx, onnxruntime and the hashing would read it."""
    model = model or load_graph(graph, root)
    locations = {
        entry.value
        for tensor in model.graph.initializer
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }
    top = Path(os.path.realpath(root if root is not None else graph.parent))
    for location in sorted(locations):
        real = Path(os.path.realpath(graph.parent / location))
        if Path(location).is_absolute() or ".." in Path(location).parts or not real.is_relative_to(top):
            raise ExporterError(f"{graph} keeps its weights in {location!r}, outside the bundle {top}: refused, "
                                "nothing was read from there.", DAMAGED)
    return [graph] + [graph.parent / loc for loc in sorted(locations)]


def graph_sha256(graph: Path) -> str:
    """One digest over the graph file and its weight files (names and contents)."""
    h = hashlib.sha256()
    for path in graph_files(graph):
        if not path.is_file():
            raise ExporterError(f"{graph.name} references weights {path.name}, which is missing from {graph.parent}.",
                                "Copy the whole bundle directory, or rebuild it with `python -m exporter build`.")
        h.update(path.name.encode() + b"\0" + sha256(path, graph.parent).encode())
    return h.hexdigest()


# the fields of an engine entry that lookups, pre-flight checks, reports and bench read (the rest is informative)
ENTRY_FIELDS = ("engine", "graph", "key", "key_fields", "runtime", "runtime_version", "target", "gpu", "sha256")


def read_folder(folder: Path, root: Optional[Path] = None) -> dict:
    """engine.json of an engine folder ({'entries': {graph file: entry}}); empty when absent, an ExporterError
    when damaged (not JSON, not entries with every field in ENTRY_FIELDS, or fields a bundle never writes: a runtime
    this exporter does not know, a graph that is not one of the bundle's, an engine that is not a file name in the
    folder). `root` is the bundle (default: the folder's grandparent, engines/<target>-<runtime>/)."""
    root = folder.parent.parent if root is None else root
    path = folder / ENGINE_JSON
    inside(root, folder.relative_to(root).parts)
    if not path.exists() and not path.is_symlink():
        return {"entries": {}}
    try:
        data = read_json(path, root)
    except ValueError:
        what = "is not valid JSON"
    else:
        entries = data.get("entries") if isinstance(data, dict) else None
        if not isinstance(entries, dict) or not all(isinstance(e, dict) for e in entries.values()):
            what = "holds no {graph file: engine entry} table under 'entries'"
        else:
            lacking = sorted({f"{g} lacks {f}" for g, e in entries.items() for f in ENTRY_FIELDS if f not in e})
            wrong = lacking or sorted(f"{g}: {problem}" for g, e in entries.items() for problem in _entry_problems(g, e))
            what = f"is damaged ({'; '.join(wrong)})" if wrong else None
    if what:
        raise ExporterError(f"{path} {what}.", f"Delete {folder} and rebuild its engines with `python -m exporter engine`.")
    return data


def _entry_problems(graph: str, entry: dict) -> list[str]:
    """What in one engine entry no build writes (checked before anything opens, imports or indexes by it)."""
    problems = []
    if graph not in GRAPHS.values() or entry["graph"] != graph:
        problems.append(f"graph {entry['graph']!r} is not one of the bundle's graphs ({', '.join(GRAPHS.values())})")
    if entry["runtime"] not in RUNTIMES:
        problems.append(f"runtime {entry['runtime']!r} is not one of {', '.join(RUNTIMES)}")
    engine = entry["engine"]
    if not isinstance(engine, str) or not engine.endswith(".engine") or Path(engine).name != engine:
        problems.append(f"engine {engine!r} is not a plan file name in the folder")
    for name in ("key", "target", "runtime_version", "sha256"):
        if not isinstance(entry[name], str):
            problems.append(f"{name} {entry[name]!r} is not text")
    if not isinstance(entry["key_fields"], dict):
        problems.append("key_fields is not a table")
    return problems


def write_entry(folder: Path, graph: str, entry: dict, root: Optional[Path] = None) -> None:
    root = folder.parent.parent if root is None else root
    data = read_folder(folder, root)
    data["entries"][graph] = entry
    write_json(folder / ENGINE_JSON, data, root)


def all_entries(bundle: Path) -> list[tuple[str, dict]]:
    """(folder name, entry) for every engine recorded in the bundle; engines/ or a folder in it that is a link
    is an ExporterError (`inside`), not followed."""
    root = inside(bundle, (ENGINES_DIR,))
    if not root.is_dir():
        return []
    return [(f.name, e) for f in sorted(root.iterdir()) if f.is_dir() or f.is_symlink()
            for e in read_folder(f, bundle)["entries"].values()]
