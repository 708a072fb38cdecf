# SPDX-License-Identifier: Apache-2.0
"""THE bundle: a build's output directory, and the one owner of everything about it.

- `layout`: every file name, and which graphs a spec's build writes;
- `files`: atomic writes, file hashes, and a bundle assembled in hiding and renamed into place;
- `manifest`: manifest.json read and written, its files and its consistency checked, the recorded spec and I/O;
- `references`: references.npz, PyTorch's answers on the held-out inputs;
- `engines`: the engines index (engines/<target>-<runtime>/engine.json) and the graph content engines are keyed by;
- `results`: the build's report files and bench's timings;
- `signature`: signature.sig made and checked (`sign`, `verify --trusted-key`);
- `trust`: whether this run may load the bundle's plugin library (native code).

Commands ask this package; none knows a file name of its own.

Each name is imported from its module on first use (PEP 562), so a process that needs only the files layer (a
TensorRT-RTX check in a child process) does not import onnx and torch, which the manifest layer needs.
"""
from __future__ import annotations

import importlib

_NAMES = {
    "engines": (
        "ENTRY_FIELDS", "all_entries", "engines_dir", "graph_files", "graph_sha256", "load_graph", "read_folder",
        "write_entry",
    ),
    "files": (
        "DAMAGED", "DEBUG_PREFIX", "LIMITS", "check_space", "check_writable", "debug_dir", "file_hashes", "from_record",
        "inside", "is_inside", "keep_failed", "no_space", "open_inside", "publish_modes", "read_inside", "read_json",
        "same_bundle", "sha256", "staging", "sweep_stale", "write_bytes", "write_json", "write_text",
    ),
    "layout": (
        "BENCH_DIR", "BUILD_ENGINE", "CALIBRATION", "ENGINE_JSON", "ENGINES_DIR", "FP16", "FP8", "FP32", "GRAPHS",
        "INT8", "MANIFEST", "PLUGIN_LIBRARY", "PLUGINS", "PLUGINS_FP16", "PLUGINS_QUANTIZED", "QUANTIZED_GRAPHS",
        "REFERENCES", "REPORT_JSON", "REPORT_MD", "REPRODUCE", "RUNTIMES", "SCHEDULE", "SIGNATURE", "TIMING_CACHE",
        "TRTEXEC_DIR", "UNHASHED_SUBTREES", "Graph", "choice_of", "default_graph", "graph_path", "has_plugins",
        "planned", "precision_of",
    ),
    "manifest": (
        "NAMED_WEIGHTS", "REQUIRED", "bundle_files", "checkpoint", "checkpoint_record", "consistency_problems",
        "file_problems", "graph_io", "io_of", "kept_schedule", "read_intact", "read_manifest", "recorded_classes",
        "recorded_input", "unreadable", "version_warning", "write_manifest", "write_schedule",
    ),
    "references": (
        "References", "has_references", "read_references", "write_references",
    ),
    "results": (
        "bench_folder", "read_bench", "write_bench", "write_reports",
    ),
}
_MODULE_OF = {name: module for module, names in _NAMES.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
