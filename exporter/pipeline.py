"""The build: model → method → ONNX (fp32, fp16) → graph checks → verification → bundle.

Every stage is timed and shown as it runs; the bundle is assembled in a temp dir and only renamed
into place once everything passed (see artifacts.staging).
"""
from __future__ import annotations

import contextlib
import platform
import subprocess
import time
from dataclasses import asdict, dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Iterator, Optional

import onnx
import torch
from rich.console import Console

from . import __version__, artifacts, contents
from .checks import graph as graph_check
from .checks import parity
from .checks.compare import compare_graphs, verify_batches
from .checks.parity import StoredComparison
from .console import escape, make as make_console
from .checks.engine_build import RtxCheck, rtx_check
from .engine import report as engine_report
from .engine.report import EngineRow
from .engine import scripts
from .errors import ExporterError
from .export.fold import fold_constants
from .export.graphs import FP16, PLUGIN_LIBRARY, Graph, export_graph, planned
from .methods import apply_method, get_method
from .methods.flops import count_gmacs
from .models import create_model, input_size
from .runtime import onnx_runner
from .spec import BuildSpec
from .verify import bundle as bundle_check
from .verify import references
from .verify.report import Flops, Report

TOOLS = ("torch", "timm", "onnx", "onnxruntime", "onnxscript", "onnx-graphsurgeon", "tensorrt-rtx-cu13")


class BuildFailed(Exception):
    """Verification or a graph check failed; the message is the summary to print, `where` the
    directory holding the report."""

    def __init__(self, summary: str, where: Path):
        super().__init__(summary)
        self.where = where


@dataclass
class Outcome:
    """What a stage found: set `problems` inside the stage and it ends with ✗ and the count, not ✓; set
    `skipped` to the reason it did nothing and it ends with a warning saying so, not ✓."""

    problems: int = 0
    skipped: Optional[str] = None


@dataclass
class Stages:
    """Prints each stage as it runs and keeps its duration for the manifest. On a terminal the running
    stage is a spinner; elsewhere (a CI log) its name is printed when it starts, and again when it ends."""

    console: Console
    durations: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[Outcome]:
        start = time.perf_counter()
        outcome = Outcome()
        if not self.console.is_terminal:
            self.console.print(f"{name} ...", markup=False)
        with self.console.status(f"{escape(name)} ..."):
            try:
                yield outcome
            except BaseException:
                self.console.print(f"[red]✗[/red] {escape(name)}  ({time.perf_counter() - start:.1f}s)")
                raise
        self.durations[name] = round(time.perf_counter() - start, 3)
        if outcome.problems:
            found = f"{outcome.problems} problem{'s' if outcome.problems > 1 else ''}"
            self.console.print(f"[red]✗[/red] {escape(name)}  ({self.durations[name]:.1f}s, {found})")
        elif outcome.skipped:
            self.console.print(f"[yellow]warning[/yellow] {escape(name)} skipped: {escape(outcome.skipped)}")
        else:
            self.console.print(f"[green]✓[/green] {escape(name)}  ({self.durations[name]:.1f}s)")


def prepare(spec: BuildSpec) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(dense model, reduced model) for a spec; the same call rebuilds the reference for `verify`."""
    dense = create_model(spec.model, spec.weights, spec.seed, spec.img_size)
    return dense, apply_method(dense, spec.method, **spec.method_params)


def resolve(spec: BuildSpec) -> BuildSpec:
    """The spec with the method's defaults filled in, so the manifest and the hash say everything."""
    return replace(spec, method_params=get_method(spec.method).resolve(spec.method_params))


def build(spec: BuildSpec, out: Path, command: str, console: Optional[Console] = None) -> Path:
    console = console or make_console()
    spec = resolve(spec)
    stage = Stages(console)
    with artifacts.staging(out, spec.run_name) as tmp, artifacts.debug_dir() as debug:
        with stage(f"load {spec.model} and apply method {spec.method}"):
            dense, model = prepare(spec)
            size = input_size(dense)
            if spec.plugins:
                _check_token_ops(spec, model, size)
        kwargs = dict(img_size=size, batch=spec.batch.as_tuple(), opset=spec.opset)
        graphs = planned(spec.precision, spec.io_fp16, spec.plugins)
        fp16_facts = library_status = None
        for g in graphs:
            with stage(f"export {g.precision} ONNX" + (" (token ops as plugin nodes)" if g.lowering == "plugin" else "")):
                facts = export_graph(model, g, tmp, debug, **kwargs)
                fp16_facts = facts if g.file == FP16 else fp16_facts
                fold_constants(tmp / g.file)
        if spec.plugins:
            with stage("build the plugin library") as outcome:
                library_status = build_plugin_library(tmp)
                outcome.skipped = library_status.get("reason")
        with stage("store PyTorch references (references.npz) and reproduce.sh, build_engine.sh"):
            references.store(model, size, tmp / references.REFERENCES)
            scripts.write(tmp, spec, command, graphs, _git_commit())
        report = evaluate(spec, dense, model, tmp, graphs, stage, fp16_facts)
        write_reports(tmp, report)  # before the manifest, whose hashes cover them
        if not report.passed:
            kept = artifacts.keep_failed(tmp, out, spec.run_name)
            raise BuildFailed("\n".join(report.failures()), kept)
        manifest = {
            "exporter_version": __version__,
            "run_name": spec.run_name,
            "command": command,
            "spec": spec.to_dict(),
            "git_commit": _git_commit(),
            "tools": _tool_versions(),
            "opset": spec.opset,
            "stages_seconds": stage.durations,
            "schedule": report.schedule,
            "method_params": report.method_params,
            "flops": asdict(report.flops),
            "fp16": fp16_facts,
            "plugin_library": library_status,
            "io": {g.file: _io(tmp / g.file) for g in graphs},
            **bundle_check.checkpoint_record(spec),
            "files": artifacts.file_hashes(tmp),  # every file, the reports included
        }
        artifacts.write_json(tmp / artifacts.MANIFEST, manifest)
    return out / spec.run_name


def evaluate(spec: BuildSpec, dense, model, bundle: Path, graphs: list[Graph], stage: Stages, fp16_facts=None,
             engine: Optional[str] = None, run_engines: bool = False) -> Report:
    """Graph checks, parity against PyTorch, the TensorRT-RTX build, the stored references and (verify) the
    engines; returns the report (writes nothing)."""
    size = input_size(dense)
    with stage("check graphs (onnx.checker, static shapes, TensorRT 10.3 ops)") as found:
        problems = {g.file: graph_check.check_graph(bundle / g.file).problems for g in graphs}
        if fp16_facts and fp16_facts["unguarded_selectors"]:
            problems[FP16].append(
                f"token choices made in fp16 at {fp16_facts['unguarded_selectors']} (scores must be fp32)"
            )
        found.problems = sum(map(len, problems.values()))
    with stage("verify against PyTorch") as found:
        comparisons = compare_graphs(model, bundle, graphs, spec.batch, size)
        found.problems = sum(len(c.failures) or not c.passed for c in comparisons)
    library = bundle / PLUGIN_LIBRARY
    with stage("TensorRT-RTX parse + build" + (" (plugin library loaded)" if library.is_file() else "")) as found:
        rtx = {g.file: _rtx(bundle / g.file, spec, size, g.lowering, library) for g in graphs}
        found.problems = sum(r.status == "failed" for r in rtx.values())
    stored, engines = _stored_and_engines(spec, bundle, graphs, stage, engine, run_engines)
    report = Report(
        run_name=spec.run_name,
        spec=spec,
        schedule=model.schedule,
        method_params=model.params,  # defaults resolved (e.g. DiffRate's flops budget and its counts)
        flops=_flops(dense, model, size),
        thresholds=(
            f"fp32: max abs <= {parity.FP32_MAX_ABS:g}, top-1 agreement 100%; fp16: min cosine >= "
            f"{parity.FP16_MIN_COSINE}, top-1 agreement 100% on decisive samples (top-1/top-2 margin > 2x error); "
            f"a sample with token flips (replayed) is compared with PyTorch replaying onnxruntime's choices: in fp32 "
            f"on at most {parity.MAX_FLIP_FRACTION:.0%} of the samples, in fp16 where the fp32 score margin the "
            f"graph's choice overturns, at the first that differs, is <= {parity.NEAR_TIE:g}x the fp16 error of those "
            "scores (else the flip fails)"
        ),
        comparisons=comparisons,
        lint=problems,
        tensorrt_rtx=rtx,
        notes=list(getattr(model, "notes", [])),
        references=stored,
        engines=engines,
    )
    for line in report.warnings() + report.notes:
        stage.console.print(f"[yellow]warning[/yellow] {escape(line)}")
    return report


def write_reports(directory: Path, report: Report) -> None:
    artifacts.write_json(directory / artifacts.REPORT_JSON, report.to_dict())
    artifacts.write_text(directory / artifacts.REPORT_MD, report.markdown())


def verify(bundle: Path, console: Optional[Console] = None, weights: Optional[Path] = None, report_to: Optional[Path] = None,
           engine: Optional[str] = None, references_only: bool = False, data: Optional[Path] = None) -> Report:
    """Re-run the checks of an existing bundle (e.g. after copying it) without changing it: files and the
    manifest's consistency first, then graphs, parity, TensorRT-RTX, the stored references and the engines
    that can run here. The report goes to `report_to` (.json, else markdown) or stdout; `weights` is the
    bundle's checkpoint at a new location. With `references_only`, only the files and the runtimes on the
    stored PyTorch references (no model, weights or network needed). `data`, a folder of labelled images,
    adds top-1/top-5 of PyTorch and every graph to the report."""
    console = console or make_console()
    manifest, spec = bundle_check.read_manifest(bundle)
    bundle_check.check_report_path(report_to)
    engine_report.preflight_required(bundle, engine)  # `--engine` that cannot run here: refused before any work
    stage = Stages(console)
    with stage("check files and manifest") as found:
        problems = bundle_check.file_problems(bundle, manifest) or bundle_check.consistency_problems(bundle, manifest, spec)
        found.problems = len(problems)
    if problems:
        raise BuildFailed("the bundle does not match its manifest:\n" + "\n".join(f"- {p}" for p in problems), bundle)
    if (note := bundle_check.version_warning(manifest, __version__, _git_commit())) is not None:
        console.print(f"[yellow]warning[/yellow] {escape(note)}")
    graphs = planned(spec.precision, spec.io_fp16, spec.plugins)
    if references_only:
        report = _verify_stored(spec, bundle, graphs, stage, engine)
    else:
        ckpt = bundle_check.checkpoint(spec, manifest, weights)
        with stage(f"load {spec.model} and apply method {spec.method}"):
            dense, model = prepare(spec if ckpt is None else replace(spec, weights=str(ckpt)))
        with artifacts.debug_dir() as debug:
            with stage("export debug graphs (kept-token indices as outputs)"):
                for g in graphs:
                    export_graph(model, g, bundle, debug, write_deliverable=False, img_size=input_size(dense), batch=spec.batch.as_tuple(), opset=spec.opset)
            report = evaluate(spec, dense, model, bundle, graphs, stage, manifest.get("fp16"), engine, run_engines=True)
    if data is not None:
        from .verify import accuracy

        report.accuracy = accuracy.measure(bundle, data, console)
    from .bench.bundles import stored as bench_results

    report.throughput = bench_results(bundle)
    bundle_check.write_report(report, report_to)
    if not report.passed:
        raise BuildFailed("\n".join(report.failures()), bundle)
    return report


def _check_token_ops(spec: BuildSpec, model: torch.nn.Module, size) -> None:
    """--plugins needs at least one token op in the model (a method's, or LITv2's HiLo window attention)."""
    from . import ops

    if not ops.called(model, torch.zeros(1, 3, *size)):
        raise ExporterError(
            f"--plugins lowers token operations to TensorRT plugins, and {spec.model} with method "
            f"'{spec.method}' calls no token operation.",
            "Pass --method evit, evovit, diffrate or tome, or a LITv2 model with Hi-Fi heads (HiLo window "
            "attention), with --plugins; or drop --plugins.",
        )


def _verify_stored(spec: BuildSpec, bundle: Path, graphs: list[Graph], stage: Stages, engine: Optional[str]) -> Report:
    """verify --references-only: the build's report (its own checks as recorded), with onnxruntime and the
    engines re-run on references.npz."""
    if not (bundle / references.REFERENCES).is_file():
        raise ExporterError(f"{bundle} has no {references.REFERENCES} (built by an older exporter).",
                            "Run `python -m exporter verify` without --references-only, or rebuild the bundle.")
    stored, engines = _stored_and_engines(spec, bundle, graphs, stage, engine, run_engines=True)
    return replace(Report.load(bundle / artifacts.REPORT_JSON), references=stored, engines=engines)


def _stored_and_engines(spec, bundle, graphs, stage, engine, run_engines) -> tuple[list[StoredComparison], list[EngineRow]]:
    """onnxruntime on the stored PyTorch references, and (verify) every engine that can run here."""
    refs = references.load(bundle / references.REFERENCES)
    stored = []
    if refs is not None:
        with stage("onnxruntime on the stored PyTorch references"):
            for g in graphs:
                stored += references.check(refs, onnx_runner(bundle / g.file), g.file, g.precision,
                                           verify_batches(spec.batch), "onnxruntime (CPU)")
    if not run_engines:
        return stored, engine_report.built(bundle)
    with stage("engines on the stored PyTorch references"):
        engines = engine_report.check_engines(bundle, verify_batches(spec.batch), engine)
    for e in engines:
        if e.status == "skipped":
            stage.console.print(f"[yellow]skipped[/yellow] engines/{e.folder}/{e.engine}: {escape(e.reason)}")
    return stored, engines


def build_plugin_library(bundle: Path) -> dict:
    """Compile the plugin library into `bundle`/plugins (needs cmake, nvcc and TensorRT headers), or say
    why not: the plugin graphs are still written and verified, only the TensorRT-RTX build is skipped."""
    from .ops import library

    reason = library.missing_toolchain()
    if reason:
        return {"status": "skipped", "reason": reason}
    built = library.build_library(bundle / PLUGIN_LIBRARY.parent)
    return {"status": "built", "file": built.relative_to(bundle).as_posix()}


def _rtx(graph: Path, spec: BuildSpec, size, lowering: str, library: Path) -> RtxCheck:
    """TensorRT-RTX parse + build of one graph; a plugin graph with the bundle's plugin library loaded."""
    if lowering == "plugin" and not library.is_file():
        return RtxCheck("skipped", f"no plugin library in the bundle ({PLUGIN_LIBRARY}): cmake, nvcc or TensorRT headers were missing at build time")
    plugins = {"plugin_library": library} if lowering == "plugin" else {}
    return rtx_check(graph, batch=spec.batch.as_tuple(), input_shape_tail=(3, *size), **plugins)


def _flops(dense: torch.nn.Module, model: torch.nn.Module, size) -> Flops:
    dense_gmacs = count_gmacs(dense, size)
    gmacs = count_gmacs(model, size)
    return Flops(round(dense_gmacs, 4), round(gmacs, 4), round(dense_gmacs / gmacs, 4))


def _io(path: Path) -> dict:
    return contents.io(onnx.load(str(path), load_external_data=False))


def _git_commit(package: Path = Path(__file__).resolve().parent, timeout: float = 5.0) -> str:
    """The commit of the checkout `package` runs from ('+dirty' with uncommitted changes). 'unknown' unless
    `package` is the `exporter/` directory at the root of a git work tree (an installed copy, e.g. in a
    virtualenv inside another repository, must not record that repository's commit), or when git is
    missing or takes longer than `timeout` seconds."""
    root = package.parent

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True, timeout=timeout)
        return done.stdout.strip()

    try:
        if package.name != "exporter" or Path(git("rev-parse", "--show-toplevel")).resolve() != root.resolve():
            return "unknown"
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return git("rev-parse", "HEAD") + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _tool_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "exporter": __version__}
    for name in TOOLS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
