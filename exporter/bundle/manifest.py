# SPDX-License-Identifier: Apache-2.0
"""manifest.json: the build's record, read and written; and what `verify` checks before it runs anything (it
never changes the bundle):

1. The manifest is readable JSON with every field verification relies on (else a sentence, exit 2).
2. Its file list is the directory, exactly: every file under the bundle but the manifest itself, reports
   and subfolders included, with the recorded sha256 (else FAILED, exit 1).
3. It agrees with itself: the spec hashes to the run name, the command line gives the spec, the graphs
   present are those the spec's precision writes, each graph's inputs/outputs and opset are the ones
   recorded, and a checkpoint build records its checkpoint's sha256 (that the reports belong to this run is
   `exporter.verify.report.report_problems`: a report is verify's to read).
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any, Optional

import onnx

from ..errors import ExporterError
from ..methods import schedule as schedule_file
from ..options import resolve, spec_of_command
from ..spec import BuildSpec
from .engines import load_graph
from .files import DAMAGED, file_hashes, read_inside, read_json, sha256, write_json
from .layout import GRAPHS, MANIFEST, SCHEDULE, SIGNATURE, UNHASHED_SUBTREES, planned

# field -> type: what verification reads from the manifest
REQUIRED = {
    "run_name": str,
    "command": str,
    "spec": dict,
    "opset": int,
    "io": dict,
    "files": dict,
    "exporter_version": str,
    "git_commit": str,
}
NAMED_WEIGHTS = ("pretrained", "random")
# field -> (type, what it is): the optional fields that commands print or compute with (None: not recorded)
OPTIONAL = {
    "schedule": (list, "a list of token counts"),
    "method_params": (dict, "a table of parameters"),
    "flops": (dict, "a table of GMACs"),
    "fp16": (dict, "a table of fp16 facts"),
    "plugin_library": (dict, "a table describing the library's build"),
    "weights_path": (str, "a path"),
    "weights_sha256": (str, "a sha256"),
}
MAX_DIM = 2**31 - 1  # no runtime takes a larger dimension (TensorRT's are int32)


def field_problems(manifest: dict) -> list[str]:
    """Fields of the wrong type or beyond what a build writes, each as a phrase: the optional fields, the file
    list (names inside the bundle), and the graphs' recorded inputs/outputs (names, dtypes, bounded dimensions)."""
    problems = [f"{k} is {type(manifest[k]).__name__} {manifest[k]!r:.40}, not {what}"
                for k, (kind, what) in OPTIONAL.items() if manifest.get(k) is not None and not isinstance(manifest[k], kind)]
    if isinstance(manifest.get("schedule"), list) and not all(type(t) is int for t in manifest["schedule"]):
        problems.append("schedule holds something other than token counts")
    if isinstance(manifest.get("flops"), dict) and not all(isinstance(v, (int, float)) for v in manifest["flops"].values()):
        problems.append("flops holds something other than numbers")
    outside = [n for n in manifest["files"] if Path(n).is_absolute() or ".." in Path(n).parts or not isinstance(manifest["files"][n], str)]
    if outside:
        problems.append(f"files lists names outside the bundle: {', '.join(map(repr, outside[:3]))}")
    for graph, io in manifest["io"].items():
        if graph not in GRAPHS.values():
            problems.append(f"io describes {graph!r}, which is not one of a bundle's graphs")
        elif (why := _io_problem(io)) is not None:
            problems.append(f"the io of {graph} {why}")
    return problems


def _io_problem(io: Any) -> Optional[str]:
    if not isinstance(io, dict) or not all(isinstance(io.get(k), list) and io[k] for k in ("inputs", "outputs")):
        return "lacks its inputs or outputs"
    for value in io["inputs"] + io["outputs"]:
        if not (isinstance(value, dict) and isinstance(value.get("name"), str) and isinstance(value.get("dtype"), str)
                and isinstance(value.get("shape"), list)):
            return "holds a value without a name, dtype and shape"
        for d in value["shape"]:
            if not (isinstance(d, str) or (type(d) is int and 0 <= d <= MAX_DIM)):
                return f"gives {value['name']!r} the dimension {d!r:.40} (at most {MAX_DIM}, or a name such as 'batch')"
    return None


def unreadable(path: Path, e: OSError) -> ExporterError:
    return ExporterError(
        f"Cannot read {path}: {e.strerror or e}.",
        "Verify a copy you can read (e.g. cp -r the bundle to your home), or ask its owner to make it readable.",
    )


def read_manifest(bundle: Path) -> tuple[dict, BuildSpec]:
    """The manifest and its spec, or an ExporterError naming what is wrong with them."""
    path = bundle / MANIFEST
    if not path.is_file():
        raise ExporterError(
            f"{bundle} is not a bundle (no {MANIFEST}).",
            "Pass a directory made by `python -m exporter build`, e.g. artifacts/<run>.",
        )
    try:
        text = read_inside(path, bundle, "json")
    except OSError as e:
        raise unreadable(path, e) from None
    try:
        manifest = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = f" at line {e.lineno} column {e.colno}" if isinstance(e, json.JSONDecodeError) else ""
        why = f"{getattr(e, 'msg', e)}{where}"
        raise ExporterError(f"{path} is not valid JSON ({why}): the bundle is damaged.", DAMAGED) from None
    if not isinstance(manifest, dict):
        kind = type(manifest).__name__
        raise ExporterError(f"{path} holds a {kind}, not a manifest: the bundle is damaged.", DAMAGED)
    missing = [k for k, kind in REQUIRED.items() if not isinstance(manifest.get(k), kind)]
    if missing:
        fields = ", ".join(missing)
        raise ExporterError(f"{path} lacks {fields} (or holds the wrong type): the bundle is damaged.", DAMAGED)
    if wrong := field_problems(manifest):
        raise ExporterError(f"{path} holds what no build writes ({'; '.join(wrong)}): the bundle is damaged.", DAMAGED)
    try:
        spec = BuildSpec.from_dict(manifest["spec"])
    except KeyError as e:
        raise ExporterError(f"{path}: the spec lacks '{e.args[0]}': the bundle is damaged.", DAMAGED) from None
    except TypeError as e:
        raise ExporterError(f"{path}: the spec is malformed ({e}): the bundle is damaged.", DAMAGED) from None
    except ExporterError as e:
        raise ExporterError(f"{path}: the spec is invalid ({e.problem}): the bundle is damaged.", DAMAGED) from None
    return manifest, spec


def bundle_files(bundle: Path) -> set[str]:
    """Every entry under `bundle` but its directories, the manifest, its signature (which covers the manifest) and
    what is added on a target after the build (engines, with manifests of their own, and bench timings:
    `UNHASHED_SUBTREES`), as relative POSIX paths."""
    try:
        entries = list(bundle.rglob("*"))
    except OSError as e:
        raise unreadable(bundle, e) from None
    names = {p.relative_to(bundle).as_posix() for p in entries if (p.is_symlink() or not p.is_dir())
             and p.relative_to(bundle).parts[0] not in UNHASHED_SUBTREES}
    return names - {MANIFEST, SIGNATURE}


def file_problems(bundle: Path, manifest: dict) -> list[str]:
    """The directory against the manifest's file list: missing, unlisted and modified files."""
    listed, present = manifest["files"], bundle_files(bundle)
    problems = []
    if missing := sorted(set(listed) - present):
        problems.append(f"missing from the bundle: {', '.join(missing)}")
    if extra := sorted(present - set(listed)):
        problems.append(f"not in the manifest (added after the build): {', '.join(extra)}")
    changed = []
    for name in sorted(set(listed) & present):
        path = bundle / name
        try:
            if path.is_symlink() or not path.is_file() or sha256(path) != listed[name]:
                changed.append(name)
        except OSError as e:
            raise unreadable(path, e) from None
    if changed:
        problems.append(f"modified since the build (sha256 differs): {', '.join(changed)}")
    return problems + unhashed_problems(bundle)


def unhashed_problems(bundle: Path) -> list[str]:
    """engines/ and bench/ lie outside the hashes, but not outside the bundle: a link among them (or a FIFO, a
    device) is reported, since the tools would write or read through it."""
    odd = []
    for sub in UNHASHED_SUBTREES:
        top = bundle / sub
        if top.is_symlink() or (top.exists() and not (top.is_dir() or top.is_file())):  # a file: in the way, not a hazard
            odd.append(sub)
            continue
        for folder, dirs, files in os.walk(top):  # never follows a link to a directory
            for name in dirs + files:
                mode = os.lstat(Path(folder) / name).st_mode
                if stat.S_ISLNK(mode) or not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                    odd.append((Path(folder) / name).relative_to(bundle).as_posix())
    if not odd:
        return []
    return [f"links or special files where the tools write engines and timings (refused by engine and bench, which "
            f"would write through them): {', '.join(sorted(odd))}"]


def _with_defaults(spec: BuildSpec) -> BuildSpec:
    """The recorded spec with the method's current defaults filled in: a parameter added to a method after the
    bundle was built is absent from its spec, and the recorded command builds it at its default."""
    try:
        return resolve(spec)
    except ExporterError:  # a parameter the method no longer has: the command cannot build this spec
        return spec


def kept_inputs(bundle: Path, spec: BuildSpec) -> dict:
    """Parsers for the method parameters that name a file the bundle keeps a copy of (DiffRate's --schedule, whose
    content the spec holds): the recorded command names the file where it was at build time, and the copy is what
    that build read. A spec from before the copy holds the path itself."""
    recorded = spec.method_params.get("schedule") if spec.method == "diffrate" else None
    if isinstance(recorded, str):
        return {"schedule": str}
    return {"schedule": lambda _: kept_schedule(bundle)} if recorded is not None else {}


def kept_schedule(bundle: Path) -> dict:
    """The bundle's copy of its searched schedule (`SCHEDULE`), read through the bounded reader and checked."""
    path = bundle / SCHEDULE
    try:
        record = read_json(path, bundle)
    except OSError as e:
        raise unreadable(path, e) from None
    except ValueError:
        raise ExporterError(f"{path} is not JSON: the bundle is damaged.", DAMAGED) from None
    return schedule_file.checked(record, str(path))


def write_schedule(bundle: Path, spec: BuildSpec) -> None:
    """With a searched DiffRate schedule: its copy in the bundle (`SCHEDULE`), the record the spec holds."""
    record = spec.method_params.get("schedule") if spec.method == "diffrate" else None
    if isinstance(record, dict):
        write_json(bundle / SCHEDULE, record, bundle)


def read_intact(bundle: Path) -> tuple[dict, BuildSpec]:
    """`read_manifest`, then the files against it: for commands that use a bundle's graphs without verifying them
    again (engine, bench), so that they use the graphs that were verified."""
    manifest, spec = read_manifest(bundle)
    if problems := file_problems(bundle, manifest):
        raise ExporterError(f"{bundle} does not match its manifest ({'; '.join(problems)}).", DAMAGED)
    for graph in set(manifest["io"]) & set(manifest["files"]):  # weights kept outside: refused before a runtime opens them
        load_graph(bundle / graph, bundle)
    return manifest, spec


def consistency_problems(bundle: Path, manifest: dict, spec: BuildSpec) -> list[str]:
    """The manifest against itself and the (hash-checked) graphs; run after file_problems found none."""
    problems = []
    if spec.run_name != manifest["run_name"]:
        problems.append(
            f"the spec hashes to {spec.run_name}, not the recorded run_name {manifest['run_name']} (spec or run_name edited)"
        )
    built = spec_of_command(manifest["command"], kept_inputs(bundle, spec))
    if built is None or built.to_dict() != _with_defaults(spec).to_dict():
        problems.append(f"the recorded command does not build the recorded spec: {manifest['command']}")
    if manifest["opset"] != spec.opset:
        problems.append(f"opset {manifest['opset']} differs from the spec's opset {spec.opset}")
    graphs = [g.file for g in planned(spec.precision, spec.io_fp16, spec.plugins)]
    files = manifest["files"]
    if sorted(manifest["io"]) != sorted(graphs):
        described = ", ".join(sorted(manifest["io"])) or "no graph"
        problems.append(f"io describes {described}; a {spec.precision} build writes {', '.join(graphs)}")
    if stray := sorted(f for f in files if f.endswith(".onnx") and f not in manifest["io"]):
        problems.append(f"graphs the build does not describe: {', '.join(stray)}")
    for g in graphs:
        if g not in files:
            problems.append(f"{g} is missing, but a {spec.precision} build writes it")
            continue
        model = load_graph(bundle / g, bundle)
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
        if opset != spec.opset:
            problems.append(f"{g} is opset {opset}, the spec says {spec.opset}")
        if manifest["io"].get(g) not in (None, io_of(model)):
            problems.append(f"the io recorded for {g} differs from the graph's inputs/outputs {io_of(model)}")
    if (manifest.get("fp16") is not None) != (spec.precision != "fp32"):
        problems.append(f"fp16 facts {'present' if manifest.get('fp16') else 'absent'} in a {spec.precision} build")
    if spec.weights not in NAMED_WEIGHTS and not isinstance(manifest.get("weights_sha256"), str):
        problems.append("the checkpoint's sha256 (weights_sha256) is not recorded")
    return problems


def checkpoint(spec: BuildSpec, manifest: dict, moved: Optional[Path]) -> Optional[Path]:
    """The checkpoint to rebuild the reference from: the recorded path or `moved`, checked by sha256."""
    if moved is not None and spec.weights in NAMED_WEIGHTS:
        raise ExporterError(
            f"--weights {moved}: this bundle was built with --weights {spec.weights}, not a checkpoint.",
            "Drop --weights; verify rebuilds the reference model from the bundle's spec.",
        )
    if spec.weights in NAMED_WEIGHTS:
        return None
    path = moved or Path(manifest.get("weights_path") or spec.weights)
    if not path.is_file():
        raise ExporterError(
            f"The checkpoint {path} {'' if moved else 'this bundle was built from '}does not exist.",
            "Pass its new location: python -m exporter verify BUNDLE --weights PATH.",
        )
    try:
        digest = sha256(path.resolve())  # the user's file, which may be a link (a hub cache's are)
    except OSError as e:
        raise unreadable(path, e) from None
    if digest != manifest["weights_sha256"]:
        raise ExporterError(
            f"{path} is not the checkpoint this bundle was built from (its sha256 is {digest[:12]}..., "
            f"the manifest records {manifest['weights_sha256'][:12]}...).",
            "Pass the original checkpoint with --weights PATH (verify compares the graphs with the model they came from).",
        )
    return path


def version_warning(manifest: dict, version: str, commit: str) -> Optional[str]:
    """A line when this exporter is not the one that built the bundle (the debug graphs are re-exported)."""
    built = (manifest["exporter_version"], manifest["git_commit"])
    if built == (version, commit):
        return None
    return (
        f"built by exporter {built[0]} (commit {built[1]}), verifying with {version} (commit {commit}): the "
        "reference model and the debug graphs come from this code, so a difference may come from the code"
    )


def checkpoint_record(spec: BuildSpec) -> dict:
    """For a checkpoint build: its absolute path and sha256, so verify can refuse another file by name."""
    if spec.weights in NAMED_WEIGHTS:
        return {}
    path = Path(spec.weights).resolve()
    return {"weights_path": str(path), "weights_sha256": sha256(path)}


def graph_io(path: Path) -> dict[str, list[dict]]:
    """A graph's inputs and outputs as the manifest records them: name, numpy dtype, shape (a named dimension
    stays a name, e.g. 'batch')."""
    return io_of(load_graph(path))


def io_of(model: onnx.ModelProto) -> dict[str, list[dict]]:
    """`graph_io` of a graph already loaded."""
    def values(items):
        return [{"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
                 "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]} for v in items]

    return {"inputs": values(model.graph.input), "outputs": values(model.graph.output)}


def recorded_input(io: dict, graph: str) -> tuple[str, tuple[int, ...]]:
    """The name and shape (without the batch axis) of `graph`'s input, as `io` (the manifest's) records it."""
    inputs = (io.get(graph) or {}).get("inputs") or []
    if not inputs:
        raise ExporterError(f"The manifest records no input for {graph}.", DAMAGED)
    name, dims = inputs[0]["name"], inputs[0]["shape"][1:]
    if any(not isinstance(d, int) or d < 1 for d in dims):
        raise ExporterError(f"{graph}: input '{name}' has a dynamic dimension other than the batch.",
                            "Rebuild the bundle with `python -m exporter build` (only the batch axis may be dynamic).")
    return name, tuple(dims)


def recorded_classes(manifest: dict) -> int:
    """Classes the bundle predicts, from the logits shape the manifest records."""
    io = next(iter(manifest["io"].values()))
    return int(io["outputs"][0]["shape"][-1])


def write_manifest(bundle: Path, record: dict[str, Any]) -> None:
    """manifest.json: `record` with the sha256 of every file in `bundle` (the reports included), written last."""
    write_json(bundle / MANIFEST, {**record, "files": file_hashes(bundle)})
