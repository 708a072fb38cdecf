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
import stat
import tempfile
import time
from dataclasses import fields
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Optional, TypeVar

from ..errors import ExporterError
from ..interrupt import owner
from ..rtx_child import TEMP_PREFIX as RTX_PREFIX
from .layout import MANIFEST, REPORT_JSON, REPORT_MD, SIGNATURE, UNHASHED_SUBTREES

DAMAGED = "Copy the bundle again from where it was built, or rebuild it with `python -m exporter build`."


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
_LEGACY = re.compile(rf"^(\..+\.[a-z0-9_]+\.(partial|old)|{RTX_PREFIX}[a-z0-9_]+)$")  # written before the pid was recorded
DEBUG_PREFIX = "exporter-debug-"
LEGACY_AGE_S = 24 * 3600


@contextlib.contextmanager
def staging(out: Path, name: str) -> Iterator[Path]:
    """Yield a temp dir; on success it becomes `out/name` (replacing an older bundle), else it is removed.

    Two builds of one spec may finish at the same instant: the loser finds the winner's bundle in place
    and, when it holds the same files, leaves it there and discards its own copy.
    """
    check_writable(out)
    sweep_stale(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.{owner()}.", suffix=".partial", dir=out))
    try:
        yield tmp
        publish_modes(tmp)
        _install(tmp, out / name)
    except BaseException as e:
        full = (isinstance(e, DiskFull) and e.folder != out) or (isinstance(e, OSError) and _full_disk(e, out))
        written = _size(tmp)  # before the partial files go
        shutil.rmtree(tmp, ignore_errors=True)
        if full:  # named by the folder the user gave, not the hidden one
            raise no_space(out, written=written) from None
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
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.{owner()}.", suffix=".old", dir=final.parent))
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
    except (OSError, ValueError, AttributeError, ExporterError):  # a damaged bundle in place is not this one
        return False


def sweep_stale(out: Optional[Path] = None) -> list[Path]:
    """Remove hidden work directories under `out`, and debug and TensorRT-RTX child directories in the temp folder,
    whose process is gone (None: only the temp folder's)."""
    removed = []
    candidates = [(p, _HIDDEN.match(p.name)) for p in (_listdir(out) if out is not None else [])]
    temp = re.compile(rf"^(?:{DEBUG_PREFIX}|{RTX_PREFIX})(?P<pid>\d+)@(?P<host>[0-9a-f]{{8}})-")
    candidates += [(p, temp.match(p.name)) for p in _listdir(Path(tempfile.gettempdir()))]
    host = owner().split("@")[1]
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
    with tempfile.TemporaryDirectory(prefix=f"{DEBUG_PREFIX}{owner()}-") as d:
        yield Path(d)


def publish_modes(root: Path) -> None:
    """Permissions as for any file the user creates (umask), so a bundle can be copied and used by others.

    mkdtemp makes 0700 directories and some writers 0600 files; a bundle gets 0777 & ~umask for its
    directories (and executable files, such as a plugin library) and 0666 & ~umask for the other files.
    """
    umask = _umask()
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


def write_json(path: Path, data: Any, root: Optional[Path] = None) -> None:
    """Atomic, stable JSON (sorted keys), so re-running a stage never leaves half a file."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n", root)


def write_text(path: Path, text: str, root: Optional[Path] = None) -> None:
    write_bytes(path, text.encode(), root)


def write_bytes(path: Path, data: bytes, root: Optional[Path] = None) -> None:
    """THE writer of every file the tools put into a bundle (or beside it): `data` into a temp file created
    exclusively (O_EXCL, never through a link planted under its name) in the real directory of `path`, then
    renamed over `path` (a link at `path` is replaced, not followed): a reader sees the old file or the new one.
    With `root` (the bundle), every folder from `root` to `path` must be a real directory inside it (a folder
    linked elsewhere would send the file out of the bundle). A full disk is a sentence naming the folder."""
    folder = path.parent
    if root is not None:
        inside(root, folder.relative_to(root).parts)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)  # O_CREAT|O_EXCL|O_NOFOLLOW
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())  # as any file the user creates (mkstemp makes it 0600)
            f.write(data)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise no_space(folder, len(data)) from None
        raise


class DiskFull(ExporterError):
    """A write refused for lack of space in `folder` (`no_space`)."""

    folder: Path


def no_space(folder: Path, needed: Optional[int] = None, written: Optional[int] = None) -> DiskFull:
    """The sentence for a full disk while writing into `folder`: where, the space free, and what was to be written
    (`needed`, one file) or had been written when it filled (`written`, a bundle, which needs more than that)."""
    try:
        free = f"{shutil.disk_usage(folder).free / 1e6:.1f} MB free"
    except OSError:
        free = "no space left"
    if needed is not None:
        free += f", at least {needed / 1e6:.1f} MB needed"
    if written:
        free += f"; the build had written {written / 1e6:.1f} MB when it ran out, and needs more than that"
    error = DiskFull(f"The disk holding {folder} has no room for this ({free}): nothing was kept.",
                     "Free space there, or pass --out a folder on a disk with room for the bundle.")
    error.folder = folder
    return error


def check_space(folder: Path, needed: int) -> None:
    """Refuse a write of about `needed` bytes into `folder` up front when its disk has less free."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if free < needed:
        raise no_space(folder, needed)


def _full_disk(e: OSError, folder: Path) -> bool:
    """ENOSPC (or a quota), or a writer that lost the errno: numpy's tofile (the ONNX exporter's weights) says only
    'problem writing element' when its fwrite fails, and has removed its partial file by the time this is asked."""
    return e.errno in (errno.ENOSPC, errno.EDQUOT) or (e.errno is None and "problem writing" in str(e))


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def inside(root: Path, parts: tuple[str, ...] = (), create: bool = False) -> Path:
    """`root`/`parts` as a real directory inside `root` (engines/<target>-<runtime>/, bench/): each folder on the way
    is checked not to be a link (or anything but a directory), and made when missing with `create`. A link there
    would send what the tools write out of the bundle, so it is refused, not followed."""
    path = root
    for part in parts:
        path = path / part
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            if not create:
                continue
            with contextlib.suppress(FileExistsError):
                path.mkdir()
            mode = os.lstat(path).st_mode
        if not stat.S_ISDIR(mode):
            what = "a symbolic link" if stat.S_ISLNK(mode) else "not a directory"
            raise ExporterError(f"{path} is {what}: the tools write only into real folders of the bundle {root}.",
                                f"Remove {path} (engines and timings are rebuilt by `python -m exporter engine` and "
                                "`bench`), or copy the bundle again from where it was built.")
    if path.exists() and not is_inside(path, root):
        raise ExporterError(f"{path} lies outside the bundle {root} once its links are resolved.",
                            "Copy the bundle again from where it was built (cp -r without links).")
    return path


def is_inside(path: Path, root: Path) -> bool:
    """`path` is `root` or lies under it once every link is resolved."""
    real, top = os.path.realpath(path), os.path.realpath(root)
    return real == top or real.startswith(top.rstrip(os.sep) + os.sep)


T = TypeVar("T")


def from_record(cls: type[T], record: dict) -> T:
    """The dataclass `cls` from a JSON record written from one (`asdict`): keys it has no field for
    (derived ones such as 'passed') are dropped, fields the record lacks (an older exporter's) keep their
    defaults."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in record.items() if k in names})


# The most the tools read of one file of each kind: a bundle from elsewhere must not make them read until memory runs
# out (a link to /dev/zero is refused anyway; a huge regular file is refused by its size, before it is read).
# Hashing streams, so its bound ("data", weights and checkpoints) only stops a file that never ends.
LIMITS = {"json": 64 << 20, "graph": 2 << 30, "references": 2 << 30, "plan": 8 << 30, "cache": 1 << 30, "data": 1 << 40}


def open_inside(path: Path, root: Optional[Path] = None, kind: str = "json") -> BinaryIO:
    """`path` opened for reading if it is a regular file (not a link, FIFO or device) inside `root` (default: its own
    folder) of at most LIMITS[kind] bytes; else an ExporterError saying which. A FIFO is opened without blocking, so
    it is refused instead of waited on."""
    root = path.parent if root is None else root
    if not is_inside(path.parent, root):
        raise _refused(path, root, "it lies outside the bundle once its folders' links are resolved")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise _refused(path, root, "it is a symbolic link") from None
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_size > LIMITS[kind]:
        os.close(fd)
        why = (f"it is {info.st_size / 1e6:.0f} MB, more than a {kind} file of a bundle may be "
               f"({LIMITS[kind] / 1e6:.0f} MB)") if stat.S_ISREG(info.st_mode) else "it is not a regular file"
        raise _refused(path, root, why)
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def _refused(path: Path, root: Path, why: str) -> ExporterError:
    return ExporterError(f"Refused to read {path}: {why}.", DAMAGED)


def read_inside(path: Path, root: Optional[Path] = None, kind: str = "json") -> bytes:
    """The bytes of `path`, read through `open_inside` (a regular file inside `root`, its size bounded)."""
    with open_inside(path, root, kind) as f:
        return f.read()


def read_json(path: Path, root: Optional[Path] = None) -> Any:
    """JSON read through `open_inside`; ValueError when it is not JSON (callers word that for their file)."""
    return json.loads(read_inside(path, root, "json"))


def sha256(path: Path, root: Optional[Path] = None, kind: str = "data") -> str:
    """sha256 of a regular file (never a FIFO, device or link: `open_inside`)."""
    h = hashlib.sha256()
    with open_inside(path, root, kind) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_hashes(bundle: Path, exclude: tuple[str, ...] = (MANIFEST, SIGNATURE)) -> dict[str, str]:
    """sha256 of every file under `bundle` (subfolders and hidden files included) but the paths in `exclude`."""
    return {
        name: sha256(p)
        for p in sorted(bundle.rglob("*"))
        if p.is_file() and (name := p.relative_to(bundle).as_posix()) not in exclude
        and p.relative_to(bundle).parts[0] not in UNHASHED_SUBTREES
    }

