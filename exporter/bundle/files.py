# SPDX-License-Identifier: Apache-2.0
"""The bundle on disk: atomic writes, file hashes, and a bundle built in hiding.

A bundle is built in a hidden temp directory beside its final place and renamed at the end, so an
interrupted or failed build never leaves a directory that looks complete.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from dataclasses import fields
from pathlib import Path
from typing import Any, Iterator, TypeVar

from ..errors import ExporterError
from .layout import MANIFEST, REPORT_JSON, REPORT_MD, UNHASHED_SUBTREES


def check_writable(out: Path) -> None:
    """Fail before any work if `out` cannot hold a bundle."""
    if out.exists() and not out.is_dir():
        raise ExporterError(
            f"Cannot write to --out {out}: it is a file, not a directory.",
            "Pass --out a directory (it is created if missing), or move the file away.",
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise ExporterError(
            f"Cannot write to --out {out}: {e.strerror or e}.",
            "Pass --out a directory you can write to (it is created if missing).",
        ) from None


# Hidden work directories carry the pid of their process and a hash of its host name, so a later build on
# the same host can tell the leftovers of a killed one (SIGKILL, power loss) from those of a build still
# running: `.<run>.<pid>@<host>.<random>.partial`. Another host's (or container's) are left alone.
_HIDDEN = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)@(?P<host>[0-9a-f]{8})\.[a-z0-9_]+\.(?P<kind>partial|old)$")
_LEGACY = re.compile(r"^\..+\.[a-z0-9_]+\.(partial|old)$")  # written before the pid was recorded
DEBUG_PREFIX = "exporter-debug-"
LEGACY_AGE_S = 24 * 3600


def _owner() -> str:
    """`<pid>@<host hash>`: who is working in a hidden directory."""
    return f"{os.getpid()}@{hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]}"


@contextlib.contextmanager
def staging(out: Path, name: str) -> Iterator[Path]:
    """Yield a temp dir; on success it becomes `out/name` (replacing an older bundle), else it is removed.

    Two builds of one spec may finish at the same instant: the loser finds the winner's bundle in place
    and, when it holds the same files, leaves it there and discards its own copy.
    """
    check_writable(out)
    sweep_stale(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.{_owner()}.", suffix=".partial", dir=out))
    try:
        yield tmp
        publish_modes(tmp)
        _install(tmp, out / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(out / f"{name}.failed", ignore_errors=True)  # an earlier failure of this spec is now stale


def _install(tmp: Path, final: Path, attempts: int = 5) -> None:
    """Rename `tmp` to `final`; an existing `final` is replaced unless it is the same bundle."""
    for _ in range(attempts):
        try:
            os.replace(tmp, final)
            return
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        if same_bundle(tmp, final):  # another process just built this spec with this code: keep its copy
            shutil.rmtree(tmp, ignore_errors=True)
            return
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.{_owner()}.", suffix=".old", dir=final.parent))
        with contextlib.suppress(FileNotFoundError):  # another process may have moved it first
            os.replace(final, old / final.name)
        shutil.rmtree(old, ignore_errors=True)
    raise ExporterError(
        f"Other processes kept replacing {final} while this build finished; its result was discarded.",
        "Build each spec from one process at a time (the bundle in place is complete).",
    )


def same_bundle(a: Path, b: Path) -> bool:
    """Same files, byte for byte, apart from the run's own record (durations, command), from the same code."""
    record = (MANIFEST, REPORT_JSON, REPORT_MD)
    try:
        ma, mb = read_json(a / MANIFEST), read_json(b / MANIFEST)
        if (ma.get("exporter_version"), ma.get("git_commit")) != (mb.get("exporter_version"), mb.get("git_commit")):
            return False
        return file_hashes(a, exclude=record) == file_hashes(b, exclude=record)
    except (OSError, ValueError, AttributeError):
        return False


def sweep_stale(out: Path) -> list[Path]:
    """Remove hidden work directories under `out`, and debug directories in the temp folder, whose process is gone."""
    removed = []
    candidates = [(p, _HIDDEN.match(p.name)) for p in _listdir(out)]
    debug = re.compile(rf"^{DEBUG_PREFIX}(?P<pid>\d+)@(?P<host>[0-9a-f]{{8}})-")
    candidates += [(p, debug.match(p.name)) for p in _listdir(Path(tempfile.gettempdir()))]
    host = _owner().split("@")[1]
    for path, match in candidates:
        if not path.is_dir() or path.is_symlink():
            continue
        if match is not None:
            stale = match["host"] == host and not _alive(int(match["pid"]))
        else:
            stale = bool(_LEGACY.match(path.name)) and _age(path) > LEGACY_AGE_S
        if stale:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _listdir(d: Path) -> list[Path]:
    try:
        return list(d.iterdir())
    except OSError:
        return []


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's process (or a pid we cannot probe): leave its files alone
    return True


@contextlib.contextmanager
def debug_dir() -> Iterator[Path]:
    """A temp folder for debug graphs, named with our pid so a later build can sweep it if we are killed."""
    with tempfile.TemporaryDirectory(prefix=f"{DEBUG_PREFIX}{_owner()}-") as d:
        yield Path(d)


def publish_modes(root: Path) -> None:
    """Permissions as for any file the user creates (umask), so a bundle can be copied and used by others.

    mkdtemp makes 0700 directories and some writers 0600 files; a bundle gets 0777 & ~umask for its
    directories (and executable files, such as a plugin library) and 0666 & ~umask for the other files.
    """
    umask = os.umask(0)
    os.umask(umask)
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        executable = path.is_dir() or path.stat().st_mode & 0o111
        path.chmod((0o777 if executable else 0o666) & ~umask)


def keep_failed(tmp: Path, out: Path, name: str) -> Path:
    """Move a failed build to `out/name.failed` for inspection: clearly not a bundle."""
    failed = out / f"{name}.failed"
    shutil.rmtree(failed, ignore_errors=True)
    publish_modes(tmp)
    os.replace(tmp, failed)
    return failed


def write_json(path: Path, data: Any) -> None:
    """Atomic, stable JSON (sorted keys), so re-running a stage never leaves half a file."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode())


def write_bytes(path: Path, data: bytes) -> None:
    """`data` into a hidden file beside `path`, renamed over it: a reader sees the old file or the new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


T = TypeVar("T")


def from_record(cls: type[T], record: dict) -> T:
    """The dataclass `cls` from a JSON record written from one (`asdict`): keys it has no field for
    (derived ones such as 'passed') are dropped, fields the record lacks (an older exporter's) keep their
    defaults."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in record.items() if k in names})


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_hashes(bundle: Path, exclude: tuple[str, ...] = (MANIFEST,)) -> dict[str, str]:
    """sha256 of every file under `bundle` (subfolders and hidden files included) but the paths in `exclude`."""
    return {
        name: sha256(p)
        for p in sorted(bundle.rglob("*"))
        if p.is_file() and (name := p.relative_to(bundle).as_posix()) not in exclude
        and p.relative_to(bundle).parts[0] not in UNHASHED_SUBTREES
    }

