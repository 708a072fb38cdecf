# SPDX-License-Identifier: Apache-2.0
"""`python -m exporter verify BUNDLE`: re-run the checks of an existing bundle (e.g. after copying it) without
changing it, and write the report outside it."""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence

from rich.console import Console

from .. import __version__
from ..bundle import (checkpoint, consistency_problems, debug_dir, file_problems, is_inside, planned, read_bench,
                      read_manifest, sweep_stale, version_warning, write_json, write_text)
from ..bundle.signature import Signature, check
from ..bundle.trust import decide
from ..console import escape, inert, make as make_console
from ..errors import BuildFailed, ExporterError
from ..export.graphs import export_graph
from ..models import input_size
from ..stages.facts import git_commit
from ..stages.model import prepare
from ..stages.progress import Stages
from ..verify import accuracy
from ..verify.engines import preflight_required
from ..verify.evaluate import evaluate, on_stored_references
from ..verify.report import Report, report_problems


def verify(bundle: Path, console: Optional[Console] = None, weights: Optional[Path] = None, report_to: Optional[Path] = None,
           engine: Optional[str] = None, references_only: bool = False, data: Optional[Path] = None,
           trusted_keys: Sequence[Path] = (), require_signature: bool = False, trust_plugins: bool = False) -> Report:
    """Files and the manifest's consistency first, then graphs, parity, TensorRT-RTX, the stored references and the
    engines that can run here. The report goes to `report_to` (.json, else markdown) or stdout; `weights` is the
    bundle's checkpoint at a new location. With `references_only`, only the files and the runtimes on the
    stored PyTorch references (no model, weights or network needed). `data`, a folder of labelled images,
    adds top-1/top-5 of PyTorch and every graph to the report. The signature is checked first (`check_signature`);
    the bundle's plugin library is loaded only when it verified with one of `trusted_keys`, or with `trust_plugins`."""
    console = console or make_console()
    if data is not None:  # a wrong folder fails before minutes of verification
        accuracy.check(bundle, data)
    manifest, spec = read_manifest(bundle)
    check_report_path(report_to, bundle)
    sweep_stale()  # a killed run's TensorRT-RTX and debug folders
    stage = Stages(console)
    signature = check_signature(bundle, trusted_keys, require_signature, stage)
    decide(bundle, signature, trust_plugins)
    preflight_required(bundle, engine)  # `--engine` that cannot run here: refused before any work
    with stage("check files and manifest") as found:
        problems = file_problems(bundle, manifest) or (consistency_problems(bundle, manifest, spec)
                                                       + report_problems(bundle, manifest))
        found.problems = len(problems)
    if problems:
        raise BuildFailed("the bundle does not match its manifest:\n" + "\n".join(f"- {p}" for p in problems), bundle)
    if (note := version_warning(manifest, __version__, git_commit())) is not None:
        console.print(f"[yellow]warning[/yellow] {escape(note)}")
    graphs = planned(spec.precision, spec.io_fp16, spec.plugins)
    if references_only:
        report = on_stored_references(spec, bundle, graphs, stage, engine)
    else:
        ckpt = checkpoint(spec, manifest, weights)
        with stage(f"load {spec.model} and apply method {spec.method}"):
            dense, model = prepare(spec if ckpt is None else replace(spec, weights=str(ckpt)))
        with debug_dir() as debug:
            with stage("export debug graphs (kept-token indices as outputs)"):
                for g in graphs:
                    export_graph(model, g, bundle, debug, write_deliverable=False, img_size=input_size(dense),
                                 batch=spec.batch.as_tuple(), opset=spec.opset)
            report = evaluate(spec, dense, model, bundle, graphs, stage, manifest.get("fp16"), engine, run_engines=True)
    if data is not None:
        report.accuracy = accuracy.measure(bundle, data, console)
    report.throughput = read_bench(bundle)
    report.signature = signature.said
    write_report(report, report_to)
    if not report.passed:
        raise BuildFailed("\n".join(report.failures()), bundle)
    return report


def check_signature(bundle: Path, trusted_keys: Sequence[Path], require_signature: bool, stage: Stages) -> Signature:
    """The signature against the trusted keys: FAILED (exit 1) when it does not verify with them, or when
    `require_signature` and none verified it; unsigned or unchecked is said, not passed."""
    if require_signature and not trusted_keys:
        raise ExporterError("--require-signature needs the key to check the signature with.",
                            "Pass --trusted-key PUB (the signer's public key; repeat it for several signers).")
    with stage("check the signature") as found:
        signature = check(bundle, trusted_keys)
        found.problems = int(signature.status == "bad")
        if signature.status in ("unsigned", "unchecked"):
            found.skipped = signature.said
    if signature.verified:
        stage.console.print(escape(signature.said))
    refused = signature.status == "bad" or (require_signature and not signature.verified)
    if refused:
        why = " (--require-signature)" if signature.status != "bad" else ""
        raise BuildFailed(f"the bundle's signature{why}: {signature.said}", bundle)
    return signature


def check_report_path(path: Optional[Path], bundle: Path) -> None:
    """Fail before any work if `--report PATH` cannot be written, or would be written into the bundle (verify never
    changes a bundle: a file added to it fails its next verify)."""
    if path is not None and is_inside(path.parent, bundle):
        beside = bundle.parent / f"{bundle.name}.verify{path.suffix or '.md'}"
        raise ExporterError(f"--report {path} lies inside the bundle {bundle}: verify does not change a bundle, and a "
                            "report written into it would fail the next verify.",
                            f"Write it outside the bundle, e.g. --report {beside}.")
    if path is not None and (path.is_dir() or not path.parent.is_dir()):
        raise ExporterError(
            f"--report {path} is {'a directory' if path.is_dir() else 'in a directory that does not exist'}.",
            "Pass --report a file path (e.g. verify.json or verify.md) in an existing directory.",
        )


def write_report(report: Report, path: Optional[Path]) -> None:
    """verify's report: to `path` (JSON for .json, else markdown), or to stdout; never into the bundle."""
    if path is None:
        sys.stdout.write(inert(report.markdown(), lines=True))
        return
    try:
        if path.suffix == ".json":
            write_json(path, report.to_dict())
        else:
            write_text(path, report.markdown())
    except OSError as e:
        raise ExporterError(
            f"Cannot write --report {path}: {e.strerror or e}.", "Pass --report a path in a directory you can write to."
        ) from None
