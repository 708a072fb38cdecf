# SPDX-License-Identifier: Apache-2.0
"""The report of a build or a verify: every check that ran and what it found, as one typed object.

`build` writes it into the bundle as report.json (`to_dict`) and report.md (`markdown`); `verify` rebuilds
it, or with --references-only re-reads the build's (`load`) and replaces what it re-ran. Whether it
passed, what failed and what passed without proving much are derived from the parts (`passed`,
`failures`, `warnings`), never stored as separate decisions, so no reader can disagree with another.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..bundle import REPORT_JSON, REPORT_MD, from_record, read_json
from ..checks.parity import Comparison, StoredComparison
from ..engine.rtx_check import RtxCheck
from ..errors import ExporterError
from ..spec import BuildSpec
from .accuracy import Accuracy
from .engines import EngineRow
from .report_md import render


@dataclass
class Flops:
    dense_gmacs: float
    gmacs: float
    ratio: float  # dense / reduced


@dataclass
class Report:
    run_name: str
    spec: BuildSpec
    schedule: Optional[list[int]]  # tokens leaving each block (None: dense)
    method_params: dict[str, Any]  # what the method ran with, defaults resolved
    flops: Flops
    thresholds: str  # the parity thresholds, in words
    comparisons: list[Comparison]  # onnxruntime against PyTorch on the held-out inputs
    lint: dict[str, list[str]]  # graph -> problems found by the graph checks
    tensorrt_rtx: dict[str, RtxCheck]  # graph -> TensorRT-RTX parse + build
    notes: list[str] = field(default_factory=list)  # what the method changed in the request (e.g. ToMe's r cap)
    references: list[StoredComparison] = field(default_factory=list)  # runtimes on references.npz
    engines: list[EngineRow] = field(default_factory=list)
    accuracy: Optional[Accuracy] = None  # verify --data
    throughput: Optional[dict] = None  # bench/bench.json as `bench` wrote it, when it timed the bundle (verify)
    quantized: Optional[dict] = None  # the 8-bit graph judged on held-out images (build, `verify.quantized.judge`)
    signature: Optional[str] = None  # verify: who signed the bundle, checked with the trusted keys, or "unsigned"

    @property
    def passed(self) -> bool:
        return not self.failures()

    def failures(self) -> list[str]:
        """Every failed check, one line each, naming the graph (and batch, runtime) it failed on."""
        lines = [f"{c.named} at batch {c.batch}: {f}" for c in self.comparisons for f in c.failures]
        lines += [f"{graph}: {p}" for graph, problems in self.lint.items() for p in problems]
        lines += [f"{graph}: TensorRT-RTX {r.reason}" for graph, r in self.tensorrt_rtx.items() if r.status == "failed"]
        lines += [f"{c.graph} ({c.runtime}) on the stored references at batch {c.batch}: {f}"
                  for c in self.references for f in c.failures]
        lines += (self.quantized or {}).get("failures", [])
        for e in self.engines:
            lines += [f"engines/{e.folder}/{e.engine} at batch {c.batch}: {f}" for c in e.comparisons for f in c.failures]
            if e.status == "failed" and not any(c.failures for c in e.comparisons):
                lines.append(f"engines/{e.folder}/{e.engine}: {e.reason or 'failed'}")
        return lines

    def warnings(self) -> list[str]:
        """Checks that passed without proving much, one line each (graph, batch: why)."""
        rows = [*self.comparisons, *self.references, *(c for e in self.engines for c in e.comparisons)]
        return [f"{c.named} at batch {c.batch}" + (f" ({c.runtime})" if getattr(c, "runtime", "") else "") + f": {w}"
                for c in rows for w in c.warnings]

    def to_dict(self) -> dict:
        return {
            "run_name": self.run_name,
            "spec": self.spec.to_dict(),
            "passed": self.passed,
            "schedule": self.schedule,
            "method_params": self.method_params,
            "flops": asdict(self.flops),
            "thresholds": self.thresholds,
            "comparisons": [c.to_dict() for c in self.comparisons],
            "lint": self.lint,
            "tensorrt_rtx": {g: asdict(r) for g, r in self.tensorrt_rtx.items()},
            "notes": self.notes,
            "references": [c.to_dict() for c in self.references],
            "engines": [e.to_dict() for e in self.engines],
            **({"accuracy": self.accuracy.to_dict()} if self.accuracy else {}),
            **({"throughput": self.throughput} if self.throughput else {}),
            **({"quantized": self.quantized} if self.quantized else {}),
            **({"signature": self.signature} if self.signature else {}),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Report":
        """The report a build wrote (report.json); the lists an older exporter did not write are empty."""
        return cls(
            run_name=d["run_name"],
            spec=BuildSpec.from_dict(d["spec"]),
            schedule=d["schedule"],
            method_params=d.get("method_params", d["spec"]["method_params"]),
            flops=from_record(Flops, d["flops"]),
            thresholds=d["thresholds"],
            comparisons=[Comparison.from_dict(c) for c in d["comparisons"]],
            lint=d["lint"],
            tensorrt_rtx={g: RtxCheck.from_dict(r) for g, r in d["tensorrt_rtx"].items()},
            notes=d.get("notes", []),
            references=[StoredComparison.from_dict(c) for c in d.get("references", [])],
            engines=[EngineRow.from_dict(e) for e in d.get("engines", [])],
            accuracy=Accuracy.from_dict(d["accuracy"]) if d.get("accuracy") else None,
            throughput=d.get("throughput"),
            quantized=d.get("quantized"),
            signature=d.get("signature"),
        )

    @classmethod
    def read(cls, bundle: Path) -> "Report":
        """The report `bundle`'s build wrote, or an ExporterError saying it is not one."""
        return cls.load(bundle / REPORT_JSON)

    @classmethod
    def load(cls, path: Path) -> "Report":
        """report.json at `path`, or an ExporterError saying it is not one."""
        try:
            return cls.from_dict(read_json(path))
        except (OSError, ValueError, KeyError, TypeError, AttributeError, ExporterError) as e:
            raise ExporterError(f"{path} is not a report written by `python -m exporter build` ({type(e).__name__}: {e}).",
                                "Rebuild the bundle with `python -m exporter build` (its reproduce.sh has the command).") from None

    def markdown(self) -> str:
        return render(self)


def report_problems(bundle: Path, manifest: dict) -> list[str]:
    """The build's reports against the manifest: present, a passed build, and this run's."""
    missing = [f for f in (REPORT_JSON, REPORT_MD) if f not in manifest["files"]]
    if missing:
        return [f"{', '.join(missing)} missing: a bundle carries its build's report"]
    try:
        report = Report.read(bundle)
    except ExporterError as e:
        return [e.problem]
    if not report.passed:
        return [f"{REPORT_JSON} does not record a passed build"]
    if report.run_name != manifest["run_name"] or report.spec.to_dict() != manifest["spec"]:
        return [f"{REPORT_JSON} belongs to another run"]
    return []
