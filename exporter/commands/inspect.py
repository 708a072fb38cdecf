# SPDX-License-Identifier: Apache-2.0
"""`inspect`: what a bundle holds, read without running anything.

Its build (command, version, verdict, token schedule), each graph's inputs, outputs and operators, every
plugin node with the TensorRT plugin it needs (name, version, namespace, attributes; whether the bundle has
a contract and the library for it), the engines, and whether the files still match the manifest. Damaged
parts are reported as such instead of refused, so this is also the command to run on a bundle that
`verify` or `engine` refused (like `polygraphy inspect model`, but for a whole bundle).
"""
from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path
from typing import Any

import onnx

from ..bundle import PLUGIN_LIBRARY, all_entries, file_problems, graph_files, io_of, load_graph, read_manifest
from ..checks.graph import attributes
from ..console import inert
from ..errors import ExporterError
from ..ops import contracts
from ..verify.report import Report

TOP_OPS = 8  # operator types listed per graph, most frequent first


def describe(bundle: Path) -> dict[str, Any]:
    """Everything `inspect` shows, as plain data (what `--json` prints). Only a directory that is not a bundle
    at all (no readable manifest) is an ExporterError."""
    manifest, spec = read_manifest(bundle)
    try:
        verdict = "PASSED" if Report.read(bundle).passed else "FAILED"
    except ExporterError as e:
        verdict = f"unreadable report: {e.problem}"
    try:
        engines = [{"folder": folder, **{k: e.get(k) for k in ("graph", "engine", "runtime", "runtime_version",
                                                                  "target", "bytes", "built_at")}}
                   for folder, e in all_entries(bundle)]
    except ExporterError as e:
        engines = [{"folder": "?", "problem": e.problem}]
    library = bundle / PLUGIN_LIBRARY
    return {
        "bundle": str(bundle),
        "run_name": manifest["run_name"],
        "command": manifest["command"],
        "exporter": f"{manifest['exporter_version']} ({manifest['git_commit']})",
        "verdict": verdict,
        "model": spec.model,
        "method": spec.method,
        "method_params": manifest.get("method_params"),
        "precision": spec.precision,
        "batch": str(spec.batch),
        "schedule": manifest.get("schedule"),
        "flops": manifest.get("flops"),
        "files": {"listed": len(manifest["files"]), "problems": file_problems(bundle, manifest)},
        "plugin_library": {"file": PLUGIN_LIBRARY, "present": library.is_file(),
                           "build": manifest.get("plugin_library")},
        "graphs": [graph(bundle, name) for name in sorted(manifest["io"], key=lambda g: ("plugins" in g, "fp16" in g))],
        "engines": engines,
    }


def graph(bundle: Path, name: str) -> dict[str, Any]:
    """One ONNX graph: size on disk (with its weight files), opset, I/O, operator counts and plugin nodes."""
    path = bundle / name
    try:  # never a file outside the bundle, a FIFO or a device, nor weights kept outside (the bounded reader)
        model = load_graph(path, bundle)
    except ExporterError as e:
        return {"file": name, "problem": e.problem.removeprefix(f"{path} ")}
    except OSError as e:
        return {"file": name, "problem": f"cannot be read ({e.strerror or e})"}
    ops = Counter(n.op_type for n in model.graph.node)
    return {
        "file": name,
        "bytes": sum(f.stat().st_size for f in graph_files(path, model, bundle) if f.is_file()),
        "opset": next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None),
        **io_of(model),
        "nodes": len(model.graph.node),
        "ops": dict(ops.most_common(TOP_OPS)),
        "plugin_nodes": [plugin_node(n) for n in model.graph.node if n.domain == contracts.DOMAIN],
    }


def plugin_node(node: onnx.NodeProto) -> dict[str, Any]:
    """A custom-domain node as TensorRT's ONNX parser will look its plugin up (op_type, version, namespace)."""
    attrs = attributes(node)
    known = contracts.by_plugin(node.op_type)
    return {
        "node": node.name,
        "plugin": node.op_type,
        "version": attrs.pop("plugin_version", None),
        "namespace": attrs.pop("plugin_namespace", None),
        "attributes": attrs,
        "contract": f"exporter/plugins/{known.op}/contract.json" if known else None,
    }


def _plugin_lines(nodes: list[dict]) -> list[str]:
    """Plugin nodes grouped by the plugin they need (a ToMe graph has twelve of one), each group's attributes
    in node order with repeats counted: `(r=13) x12`, or `(fuse=1, k=70); (fuse=1, k=50)`."""
    groups: dict[tuple, list[str]] = {}
    for n in nodes:
        key = (n["plugin"], n["version"], n["namespace"], n["contract"])
        groups.setdefault(key, []).append(", ".join(f"{k}={v}" for k, v in n["attributes"].items()))
    lines = []
    for (plugin, version, namespace, contract), attrs in groups.items():
        runs = [(a, len(list(same))) for a, same in itertools.groupby(attrs)]
        lines += [f"  {len(attrs)} plugin node{'s' if len(attrs) > 1 else ''} {plugin} version {version}, namespace "
                  f"'{namespace}'; contract {contract or 'none: not a plugin of this exporter'}",
                  "    " + "; ".join(f"({a})" + (f" x{count}" if count > 1 else "") for a, count in runs)]
    return lines


def render(info: dict[str, Any], console) -> None:
    """`describe`'s data as indented lines (a table would truncate shapes and operator lists at 80 columns)."""
    def shapes(values):
        return ", ".join(f"{v['name']} {v['dtype']}[{'x'.join(map(str, v['shape']))}]" for v in values)

    flops = info["flops"] or {}
    params = ", ".join(f"{k}={v}" for k, v in (info["method_params"] or {}).items())
    lib = info["plugin_library"]
    lines = [
        f"{info['run_name']}: {info['verdict']}",
        f"  built by: {info['command']}",
        f"  exporter {info['exporter']}",
        f"  model {info['model']}, method {info['method']}{f' ({params})' if params else ''}, {info['precision']}, "
        f"batch {info['batch']}",
        *([f"  tokens leaving each block: {' '.join(map(str, info['schedule']))}"] if info["schedule"] else []),
        *([f"  GMACs {flops['gmacs']}" + (f" of the dense model's {flops['dense_gmacs']} ({flops['ratio']}x fewer)"
                                          if info["method"] != "none" else "")] if flops else []),
        f"  files: {info['files']['listed']} in the manifest, "
        + ("all match" if not info["files"]["problems"] else "; ".join(info["files"]["problems"])),
    ]
    for g in info["graphs"]:
        if "problem" in g:
            lines += [f"{g['file']}: {g['problem']}"]
            continue
        lines += [f"{g['file']}: {g['bytes'] / 1e6:.1f} MB, opset {g['opset']}, {g['nodes']} nodes",
                  f"  inputs:  {shapes(g['inputs'])}", f"  outputs: {shapes(g['outputs'])}",
                  f"  operators: {', '.join(f'{k} {v}' for k, v in g['ops'].items())}"
                  + (", ..." if g["nodes"] > sum(g["ops"].values()) else "")]
        lines += _plugin_lines(g["plugin_nodes"])
    if any(g.get("plugin_nodes") for g in info["graphs"]):
        build = lib["build"] or {}
        lines += [f"plugin library {lib['file']}: "
                  + ((f"in the bundle, serving {build['serves']}" if build.get("serves") else "in the bundle")
                     if lib["present"] else f"missing ({build.get('reason', 'not built')})")]
    for e in info["engines"]:
        if "problem" in e:
            lines += [f"engines: {e['problem']}"]
            continue
        lines += [f"engine engines/{e['folder']}/{e['engine']}: from {e['graph']}, {e['runtime']} {e['runtime_version']} "
                  f"for {e['target']}, {(e['bytes'] or 0) / 1e6:.1f} MB, built {e['built_at']}"]
    for line in lines:
        console.print(inert(line), markup=False)  # a bundle's text, shown and not obeyed by the terminal
