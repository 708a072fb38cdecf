# SPDX-License-Identifier: Apache-2.0
"""verify's engine stage: the report's row for each engine the bundle holds, and whether it ran and held parity.

`check_engines`: every engine in the bundle is pre-flighted against this
machine; one that fits runs on the stored references (verify.references) and is held to the same
thresholds as onnxruntime; one that does not is reported as skipped with the reason, unless the user
asked for it with `verify --engine`, which refuses (exit 2) with the pre-flight sentence.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..bundle import REFERENCES, all_entries, from_record, precision_of, read_references
from ..checks.parity import StoredComparison
from ..engine import preflight, targets
from ..errors import ExporterError
from ..runtime import engine_runner
from ..runtime import tensorrt as trt_runtime
from ..runtime.tensorrt import check_runnable
from . import references


@dataclass
class EngineRow:
    """One engine of the bundle: its manifest facts (engine.json), and whether it ran here."""

    folder: str  # engines/<folder>, e.g. sm86-tensorrt-rtx
    engine: str
    graph: str
    runtime: str
    runtime_version: str
    target: str
    gpu: Any  # the GPU it was built on (or "none": TensorRT-RTX builds without one)
    flags: Any = None
    build_seconds: float = 0.0
    bytes: int = 0
    sha256: str = ""
    status: str = "built"  # built (not run) | passed | failed | skipped
    reason: str = ""
    comparisons: list[StoredComparison] = field(default_factory=list)

    @classmethod
    def of(cls, folder: str, entry: dict) -> "EngineRow":
        return from_record(cls, {**entry, "folder": folder})

    @classmethod
    def from_dict(cls, record: dict) -> "EngineRow":
        row = from_record(cls, record)
        row.comparisons = [StoredComparison.from_dict(c) for c in record.get("comparisons", [])]
        return row

    def to_dict(self) -> dict:
        return {**asdict(self), "comparisons": [c.to_dict() for c in self.comparisons]}


def entries_for(bundle: Path, name: str) -> list[tuple[str, dict]]:
    """Engines named by `verify --engine`: a folder (sm86-tensorrt-rtx) or a target (sm86)."""
    found = [(f, e) for f, e in all_entries(bundle) if name in (f, e["target"])]
    if not found:
        have = sorted({f for f, _ in all_entries(bundle)})
        raise ExporterError(
            f"{bundle} has no engine for '{name}' (engines: {', '.join(have) or 'none'}).",
            f"Build one with `python -m exporter engine {bundle} --runtime tensorrt-rtx --target sm86` "
            "(or --runtime tensorrt on the target GPU).",
        )
    return found


def preflight_required(bundle: Path, name: Optional[str]) -> None:
    """Refuse `verify --engine NAME` before any other work when that engine cannot run here."""
    if name is None:
        return
    here: dict[str, preflight.Present] = {}
    for folder, entry in entries_for(bundle, name):
        check_runnable(bundle, folder, entry, here)


def check_engines(bundle: Path, batch_sizes: list[int], required: Optional[str] = None) -> list[EngineRow]:
    """One row per engine: its manifest facts, status (passed/failed/skipped) and parity rows."""
    wanted = {f + "/" + e["graph"] for f, e in entries_for(bundle, required)} if required else set()
    refs = read_references(bundle)
    here: dict[str, preflight.Present] = {}
    rows = []
    for folder, entry in all_entries(bundle):
        row = EngineRow.of(folder, entry)
        rows.append(row)
        try:
            check_runnable(bundle, folder, entry, here)
        except ExporterError as e:
            if folder + "/" + entry["graph"] in wanted:
                raise
            row.status, row.reason = "skipped", e.problem
            continue
        if refs is None:
            row.status, row.reason = "skipped", f"the bundle has no {REFERENCES} (built by an older exporter)"
            continue
        via = "Polygraphy TrtRunner" if trt_runtime.uses_polygraphy(entry) else "torch CUDA buffers"
        label = f"{targets.LABEL[entry['runtime']]} {entry['runtime_version']} ({here[entry['runtime']].gpu.name}, {via})"
        with engine_runner(bundle, folder, entry) as runner:
            row.comparisons = references.check(refs, runner, entry["engine"], precision_of(bundle / entry["graph"]),
                                               batch_sizes, label)
        row.status = "passed" if all(c.passed for c in row.comparisons) else "failed"
    return rows


def built(bundle: Path) -> list[EngineRow]:
    """Rows for the engines the bundle holds, not run (what `build` records in the report)."""
    rows = []
    for folder, entry in all_entries(bundle):
        row = EngineRow.of(folder, entry)
        row.reason = f"not run yet: `python -m exporter verify {bundle} --engine {folder}` on an {entry['target']} GPU"
        rows.append(row)
    return rows
