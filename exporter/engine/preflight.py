# SPDX-License-Identifier: Apache-2.0
"""Before an engine is deserialized: does it fit the runtime and GPU present, and the bundle's graph?

TensorRT answers a plan from another version with `Serialization assertion stdVersionRead ==
serializationVersion failed` and a plan for another GPU with a deserialization error; this check reads
the engine's manifest instead and refuses in one sentence naming both sides and the command that
rebuilds the engine here.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..bundle import ENGINES_DIR, choice_of, engines_dir, graph_sha256, sha256
from ..errors import ExporterError
from . import targets
from .targets import LABEL, Gpu


@dataclass(frozen=True)
class Present:
    """What this machine offers: the runtime's version (None: not installed) and its GPU (None: none)."""

    runtime: str
    version: Optional[str]
    gpu: Optional[Gpu]


def present(runtime: str) -> Present:
    try:
        version = importlib.import_module(targets.MODULES[runtime]).__version__
    except ImportError:
        version = None
    return Present(runtime, version, targets.gpu_present())


def rebuild_command(bundle: Path, entry: dict, target: Optional[str] = None) -> str:
    graph = choice_of(entry["graph"]) or "fp16"
    return (f"python -m exporter engine {bundle} --graph {graph} --runtime {entry['runtime']} "
            f"--target {target or entry['target']} --force")


def describe(entry: dict) -> str:
    return f"{entry['engine']} ({LABEL[entry['runtime']]} {entry['runtime_version']}, {entry['target']})"


def check(bundle: Path, folder: str, entry: dict, here: Present) -> None:
    """Raise ExporterError unless `entry`'s engine in engines/`folder` can run here as built."""
    where = ENGINES_DIR + "/" + folder + "/" + entry["engine"]
    label = LABEL[entry["runtime"]]
    plan = engines_dir(bundle) / folder / entry["engine"]
    if not plan.is_file() or sha256(plan) != entry["sha256"]:
        raise ExporterError(
            f"{where} is missing or differs from its manifest (sha256 {entry['sha256'][:12]}…).",
            f"Rebuild it with `{rebuild_command(bundle, entry)}`.",
        )
    graph = bundle / entry["graph"]
    if not graph.is_file() or graph_sha256(graph) != entry["key_fields"]["graph_sha256"]:
        raise ExporterError(
            f"{where} is stale: it was built from another {entry['graph']} than the bundle holds now.",
            f"Rebuild it with `{rebuild_command(bundle, entry)}`.",
        )
    if here.version is None:
        raise ExporterError(
            f"{where} was built with {label} {entry['runtime_version']} for {entry['target']}, but {label} is not installed here.",
            f"{targets.INSTALL[entry['runtime']]} (version {entry['runtime_version']}), or build an engine for this machine's runtime.",
        )
    same_version = here.version == entry["runtime_version"]
    version = [] if same_version else [f"with {label} {entry['runtime_version']}"]
    if here.gpu is None:
        raise ExporterError(
            f"{where} was built {' '.join(version + ['for ' + entry['target']])}, but this machine has "
            + ("" if same_version else f"{label} {here.version} and ") + "no CUDA GPU to run it on.",
            f"Run `python -m exporter verify {bundle} --engine {folder}` on an {entry['target']} GPU.",
        )
    same_gpu = here.gpu.target == entry["target"]
    if not (same_version and same_gpu):  # say only what differs
        built = version + ([] if same_gpu else [f"for {entry['target']}"])
        has = ([] if same_version else [f"{label} {here.version}"]) + ([] if same_gpu else [f"{here.gpu.target} ({here.gpu.name})"])
        raise ExporterError(
            f"{where} was built {' '.join(built)}, but this machine has {' on '.join(has)}.",
            f"Rebuild it here with `{rebuild_command(bundle, entry, here.gpu.target)}`.",
        )
