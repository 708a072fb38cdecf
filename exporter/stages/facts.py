# SPDX-License-Identifier: Apache-2.0
"""What a manifest records about the code that built a bundle: the exporter's git commit and the tools' versions."""
from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path

from .. import __version__

TOOLS = ("torch", "timm", "onnx", "onnxruntime", "onnxscript", "onnx-graphsurgeon", "tensorrt-rtx-cu13")


def git_commit(package: Path = Path(__file__).resolve().parent.parent, timeout: float = 5.0) -> str:
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


def tool_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "exporter": __version__}
    for name in TOOLS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
