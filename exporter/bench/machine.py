# SPDX-License-Identifier: Apache-2.0
"""The machine a benchmark ran on, recorded beside its numbers: a time means nothing without it."""
from __future__ import annotations

import ctypes
import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Optional

from ..engine import targets

RUNTIMES = ("torch", "onnxruntime", "tensorrt", "tensorrt-rtx-cu13")  # the packages whose versions are recorded


def describe(threads: int) -> dict:
    """CPU model and cores, the intra-op threads each runtime used, OS, Python and runtime versions, GPU."""
    gpu = targets.gpu_present()
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": threads,
        "os": platform.platform(),
        "python": platform.python_version(),
        **{name: _version(name) for name in RUNTIMES},
        "gpu": gpu.name if gpu else None,
        "gpu_target": gpu.target if gpu else None,
        "gpu_driver": gpu_driver() if gpu else None,
    }


def summary(machine: dict) -> str:
    """One line for the tables: 'Intel Xeon ... (2 cores, 2 threads), Linux-..., Python 3.12, torch ..., GPU: none'."""
    gpu = "none"
    if machine["gpu"]:
        gpu = f"{machine['gpu']} ({machine['gpu_target']}, driver {machine['gpu_driver'] or 'unknown'})"
    runtimes = ", ".join(f"{name} {machine[name]}" for name in RUNTIMES if machine.get(name))
    return (f"{machine['cpu']} ({machine['cores']} cores, {machine['threads']} threads per runtime), {machine['os']}, "
            f"Python {machine['python']}, {runtimes}; GPU: {gpu}")


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's name from /proc/cpuinfo (Linux; 'model name', or 'Model' on ARM boards), else platform's."""
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def gpu_driver() -> Optional[str]:
    """The NVIDIA driver's version (nvidia-smi), else the CUDA driver API version (a Jetson has no nvidia-smi)."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20).stdout.split()
            if out:
                return out[0]
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        version = ctypes.c_int()
        if ctypes.CDLL("libcuda.so.1").cuDriverGetVersion(ctypes.byref(version)) == 0:
            return f"CUDA {version.value // 1000}.{version.value % 1000 // 10}"
    except OSError:
        pass
    return None


def _version(package: str) -> Optional[str]:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
