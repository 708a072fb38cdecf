"""Engines in the report: what each engine folder holds, and (from verify) whether it ran and held parity.

`check_engines` is verify's engine stage: every engine in the bundle is pre-flighted against this
machine; one that fits runs on the stored references (verify.references) and is held to the same
thresholds as onnxruntime; one that does not is reported as skipped with the reason, unless the user
asked for it with `verify --engine`, which refuses (exit 2) with the pre-flight sentence.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from .. import artifacts
from ..errors import ExporterError
from ..verify import references
from ..verify.report import render
from . import cache, preflight, run, targets


def entries_for(bundle: Path, name: str) -> list[tuple[str, dict]]:
    """Engines named by `verify --engine`: a folder (sm86-tensorrt-rtx) or a target (sm86)."""
    found = [(f, e) for f, e in cache.all_entries(bundle) if name in (f, e["target"])]
    if not found:
        have = sorted({f for f, _ in cache.all_entries(bundle)})
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
    for folder, entry in entries_for(bundle, name):
        preflight.check(bundle, folder, entry, preflight.present(entry["runtime"]))
        problem = run.cannot_run(entry)
        if problem:
            raise problem


def check_engines(bundle: Path, batch_sizes: list[int], required: Optional[str] = None) -> list[dict]:
    """One row per engine: its manifest facts, status (passed/failed/skipped/built) and parity rows."""
    wanted = {f + "/" + e["graph"] for f, e in entries_for(bundle, required)} if required else set()
    refs = references.load(bundle / references.REFERENCES)
    here = {}
    rows = []
    for folder, entry in cache.all_entries(bundle):
        row = _row(folder, entry)
        if entry["runtime"] not in here:
            here[entry["runtime"]] = preflight.present(entry["runtime"])
        try:
            preflight.check(bundle, folder, entry, here[entry["runtime"]])
            problem = run.cannot_run(entry)
            if problem:
                raise problem
        except ExporterError as e:
            if folder + "/" + entry["graph"] in wanted:
                raise
            row.update(status="skipped", reason=e.problem)
            rows.append(row)
            continue
        if refs is None:
            row.update(status="skipped", reason=f"the bundle has no {references.REFERENCES} (built by an older exporter)")
            rows.append(row)
            continue
        via = "Polygraphy TrtRunner" if run.uses_polygraphy(entry) else "torch CUDA buffers"
        label = f"{targets.LABEL[entry['runtime']]} {entry['runtime_version']} ({here[entry['runtime']].gpu.name}, {via})"
        with run.runner(bundle, folder, entry) as runner:
            row["comparisons"] = references.check(refs, runner, entry["engine"], cache.precision_of(bundle / entry["graph"]),
                                                  batch_sizes, label)
        row["status"] = "passed" if all(c["passed"] for c in row["comparisons"]) else "failed"
        rows.append(row)
    return rows


def _row(folder: str, entry: dict) -> dict:
    keep = ("engine", "graph", "runtime", "runtime_version", "target", "gpu", "flags", "build_seconds", "bytes", "sha256")
    return {"folder": folder, **{k: entry.get(k) for k in keep}, "status": "built", "reason": "", "comparisons": []}


def built(bundle: Path) -> list[dict]:
    """Rows for the engines the bundle holds, not run (what `engine` records in the report)."""
    rows = []
    for folder, entry in cache.all_entries(bundle):
        row = _row(folder, entry)
        row["reason"] = f"not run yet: `python -m exporter verify {bundle} --engine {folder}` on an {entry['target']} GPU"
        rows.append(row)
    return rows


def record(bundle: Path) -> None:
    """Put the bundle's engines into report.json/report.md (both outside the portable file hashes)."""
    path = bundle / artifacts.REPORT_JSON
    if not path.is_file():
        return
    report = artifacts.read_json(path)
    ran = {(r["folder"], r["graph"]): r for r in report.get("engines", []) if r["status"] in ("passed", "failed")}
    rows = []
    for row in built(bundle):
        old = ran.get((row["folder"], row["graph"]))
        rows.append(old if old and old["sha256"] == row["sha256"] else row)
    report["engines"] = rows
    artifacts.write_json(path, report)
    artifacts.write_text(bundle / artifacts.REPORT_MD, render(report))
