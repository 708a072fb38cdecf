"""Builds `libexporter_plugins.so`, the token ops' TensorRT plugin library, from `plugins/` with CMake.

The library needs TensorRT's headers (not its libraries), CUDA's headers (found through nvcc by CMake's
FindCUDAToolkit), a C++17 compiler and the fused kernels' `kernels.cpp`, which CMake generates with
`python -m exporter.ops.aot` (Triton cubins per architecture, no GPU needed) unless one is given.

Headers: `trt_include`, else the `TRT_INCLUDE_DIR` environment variable, else the newest version in the
project's header collection (`<version>/include` folders: `EXPORTER_TRT_HEADERS`, else
`../shared/third_party/tensorrt` beside the checkout). On a target machine pass that machine's TensorRT
include folder: a library built against TensorRT 10 headers must be rebuilt for TensorRT 11.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from ..errors import ExporterError

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the installed (or checked-out) `exporter` package
PLUGINS_DIR = PACKAGE_DIR / "plugins"
LIBRARY_NAME = "libexporter_plugins.so"
HOST_TEST_NAME = "exporter_plugins_host_test"
# A100, RTX 30xx/A10, Jetson Orin, Ada, Hopper, Blackwell datacenter, Blackwell RTX. A cubin runs only on
# its own architecture or a later minor of the same major below 9.0, so 8.0 and 8.6 need their own.
DEFAULT_ARCHS = (80, 86, 87, 89, 90, 100, 120)
# What kernels.cpp is generated from: a change to any of these makes a new one.
_KERNEL_SOURCES = ("ops/aot.py", "ops/kernels/_triton.py", "ops/kernels/config.py", "ops/kernels/hilo_attention.py",
                   "ops/kernels/launchers.cpp.in", "plugins/common/kernels.h")


def header_versions() -> dict[str, Path]:
    """TensorRT version -> include folder, for every version of the project's header collection."""
    root = Path(os.environ.get("EXPORTER_TRT_HEADERS") or PACKAGE_DIR.parents[1] / "shared" / "third_party" / "tensorrt")
    found = {p.parent.name: p for p in root.glob("*/include") if (p / "NvInferRuntime.h").is_file()}
    return dict(sorted(found.items(), key=lambda kv: _version_key(kv[0])))


def default_trt_include() -> Optional[Path]:
    """`TRT_INCLUDE_DIR`, else the newest version of the header collection, else None."""
    if os.environ.get("TRT_INCLUDE_DIR"):
        return Path(os.environ["TRT_INCLUDE_DIR"])
    versions = header_versions()
    return list(versions.values())[-1] if versions else None


def missing_toolchain(trt_include: Optional[Path] = None, kernels_cpp: Optional[Path] = None) -> Optional[str]:
    """Why the library cannot be built here (one sentence), or None when it can."""
    if shutil.which("cmake") is None:
        return "cmake is not on PATH"
    if not any(shutil.which(c) for c in (os.environ.get("CXX", ""), "c++", "g++", "clang++") if c):
        return "no C++ compiler (c++, g++ or clang++) is on PATH"
    if _nvcc() is None:
        return "the CUDA toolkit's nvcc is neither on PATH nor in CUDA_HOME or /usr/local/cuda"
    include = trt_include or default_trt_include()
    if include is None or not (Path(include) / "NvInferRuntime.h").is_file():
        return f"no TensorRT headers (NvInferRuntime.h) at {include or 'TRT_INCLUDE_DIR (unset)'}"
    kernels_cpp = kernels_cpp or _env_kernels_cpp()
    if kernels_cpp is not None:
        return None if Path(kernels_cpp).is_file() else f"the given kernels.cpp {kernels_cpp} does not exist"
    if importlib.util.find_spec("triton") is None:
        return "triton (the kernel generator's compiler) is not installed"
    return None


def build_library(
    out_dir: Path | str,
    trt_include: Optional[Path | str] = None,
    archs: Optional[Sequence[int]] = None,
    *,
    kernels_cpp: Optional[Path | str] = None,
    build_dir: Optional[Path | str] = None,
    host_test: bool = False,
    werror: bool = False,
    jobs: int = 2,
) -> Path:
    """Configures and builds `plugins/` with CMake; copies `libexporter_plugins.so` into `out_dir` and returns its path.

    Args:
        out_dir: where the library (and with `host_test`, `exporter_plugins_host_test`) is copied.
        trt_include: TensorRT's include folder (default: see the module docstring).
        archs: GPU architectures of the kernels' cubins, e.g. (87, 90) (default: 87, 89, 90, 100, 120).
        kernels_cpp: an already generated kernels.cpp (default: `EXPORTER_KERNELS_CPP`, else CMake generates one).
        build_dir: a CMake build folder to use and keep (default: a temporary one, removed afterwards).
        host_test: also build the host-side test executable (`EXPORTER_PLUGINS_TESTS`).
        werror: warnings in the plugin sources are errors.
        jobs: parallel compile jobs.
    """
    include = Path(trt_include) if trt_include else default_trt_include()
    kernels = Path(kernels_cpp) if kernels_cpp else _env_kernels_cpp()
    problem = missing_toolchain(include, kernels)
    if problem is not None:
        raise ExporterError(f"The TensorRT plugin library cannot be built here: {problem}.",
                            "install cmake, a C++ compiler and the CUDA toolkit, and pass trt_include= (or set "
                            "TRT_INCLUDE_DIR) to a TensorRT include folder")
    archs = tuple(archs or DEFAULT_ARCHS)
    kernels = kernels or generated_kernels(archs, jobs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="exporter-plugins-") as scratch:
        build = Path(build_dir) if build_dir else Path(scratch)
        configure = [
            "cmake", "-S", str(PLUGINS_DIR), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
            f"-DTRT_INCLUDE_DIR={include}", f"-DCUDA_ARCHS={';'.join(str(a) for a in archs)}",
            f"-DPython3_EXECUTABLE={sys.executable}", f"-DEXPORTER_PLUGINS_TESTS={'ON' if host_test else 'OFF'}",
            f"-DEXPORTER_PLUGINS_WERROR={'ON' if werror else 'OFF'}",
            f"-DEXPORTER_KERNELS_CPP={kernels.resolve() if kernels else ''}",
        ]
        nvcc = _nvcc()
        if nvcc is not None:
            configure.append(f"-DCUDAToolkit_ROOT={Path(nvcc).resolve().parents[1]}")
        _run(configure, "configure")
        _run(["cmake", "--build", str(build), "-j", str(max(1, jobs))], "build")
        library = out / LIBRARY_NAME
        shutil.copy2(build / LIBRARY_NAME, library)
        if host_test:
            shutil.copy2(build / HOST_TEST_NAME, out / HOST_TEST_NAME)
    return library


def generated_kernels(archs: Sequence[int], jobs: int = 2) -> Path:
    """kernels.cpp for `archs`, generated once per content of its sources and Triton version, in the user's
    cache (`$XDG_CACHE_HOME/exporter/kernels/<key>/`): generating takes minutes of CPU, compiling the
    library seconds, so every build after the first reuses it."""
    import triton

    digest = hashlib.sha256(f"{triton.__version__} {sorted(archs)}".encode())
    for name in _KERNEL_SOURCES:
        digest.update((PACKAGE_DIR / name).read_bytes())
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "exporter" / "kernels" / digest.hexdigest()[:16]
    target = cache / "kernels.cpp"
    if not target.is_file():
        from . import aot

        cache.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache.parent, prefix=".generating-") as scratch:
            generated = aot.build(Path(scratch), sorted(archs), jobs=max(1, jobs))
            cache.mkdir(exist_ok=True)
            os.replace(generated, target)  # atomic: a concurrent build sees the whole file or none
    return target


def _run(command: list[str], step: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-25:])
        raise ExporterError(f"CMake's {step} step of the plugin library failed (exit status {done.returncode}):\n"
                            + tail,
                            "read the compiler's message above; check TRT_INCLUDE_DIR points at TensorRT 10 or newer")


def _nvcc() -> Optional[str]:
    found = shutil.which("nvcc")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and (Path(root) / "bin" / "nvcc").is_file():
            return str(Path(root) / "bin" / "nvcc")
    return None


def _env_kernels_cpp() -> Optional[Path]:
    value = os.environ.get("EXPORTER_KERNELS_CPP")
    return Path(value) if value else None


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", name))
