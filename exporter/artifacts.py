"""The bundle on disk: layout, manifest, and atomic writes.

A bundle is built in a hidden temp directory beside its final place and renamed at the end, so an
interrupted or failed build never leaves a directory that looks complete.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import ExporterError

MANIFEST = "manifest.json"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
ENGINES_DIR = "engines"
# Subtrees outside the portable file hashes: engines/<target>-<runtime>/ holds plans built after the
# bundle, on (or for) one GPU and runtime, each with its own manifest (engine.json, exporter/engine).
UNHASHED_SUBTREES = (ENGINES_DIR,)


def check_writable(out: Path) -> None:
    """Fail before any work if `out` cannot hold a bundle."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise ExporterError(
            f"Cannot write to --out {out}: {e.strerror or e}.",
            "Pass --out a directory you can write to (it is created if missing).",
        ) from None


@contextlib.contextmanager
def staging(out: Path, name: str) -> Iterator[Path]:
    """Yield a temp dir; on success it becomes `out/name` (replacing an older bundle), else it is removed."""
    check_writable(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".partial", dir=out))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    final = out / name
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".old", dir=out))
        os.replace(final, old / name)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(tmp, final)
    shutil.rmtree(out / f"{name}.failed", ignore_errors=True)  # an earlier failure of this spec is now stale


def keep_failed(tmp: Path, out: Path, name: str) -> Path:
    """Move a failed build to `out/name.failed` for inspection: clearly not a bundle."""
    failed = out / f"{name}.failed"
    shutil.rmtree(failed, ignore_errors=True)
    os.replace(tmp, failed)
    return failed


def write_json(path: Path, data: Any) -> None:
    """Atomic, stable JSON (sorted keys), so re-running a stage never leaves half a file."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_hashes(bundle: Path, exclude: tuple[str, ...] = (MANIFEST, REPORT_JSON, REPORT_MD)) -> dict[str, str]:
    return {
        p.relative_to(bundle).as_posix(): sha256(p)
        for p in sorted(bundle.rglob("*"))
        if p.is_file() and p.name not in exclude and not p.name.startswith(".")
        and p.relative_to(bundle).parts[0] not in UNHASHED_SUBTREES
    }


def open_bundle(path: Path) -> dict:
    """The manifest of an existing bundle, with a clear error when `path` is not one."""
    manifest = path / MANIFEST
    if not manifest.is_file():
        raise ExporterError(
            f"{path} is not a bundle (no {MANIFEST}).",
            "Pass a directory made by `python -m exporter build`, e.g. artifacts/<run>.",
        )
    return read_json(manifest)
