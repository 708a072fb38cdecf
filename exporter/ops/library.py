# SPDX-License-Identifier: Apache-2.0
"""Builds `libexporter_plugins.so`, the token ops' TensorRT plugin library, from `plugins/` with CMake.

The library needs TensorRT's headers (not its libraries), CUDA's headers (found through nvcc by CMake's
FindCUDAToolkit), a C++17 compiler and the fused kernels' `kernels.cpp`: the cubins of the ops and token
dtypes a bundle uses for the architectures asked for (Triton, no GPU needed), each compiled once and cached
by content (`exporter.ops.kernel_cache`), assembled by `exporter.ops.aot`. What the library serves is
recorded in it (`exporter_kernels_served`) and beside it (`libexporter_plugins.json`); `served` reads either.
A launch of anything else fails with a TensorRT error naming the op, dtype and architecture missing.

Headers: `trt_include`, else the `TRT_INCLUDE_DIR` environment variable, else the newest version in the
project's header collection (`<version>/include` folders: `EXPORTER_TRT_HEADERS`, else
`../shared/third_party/tensorrt` beside the checkout). On a target machine pass that machine's TensorRT
include folder: a library built against TensorRT 10 headers must be rebuilt for TensorRT 11.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from ..errors import ExporterError
from . import aot

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the installed (or checked-out) `exporter` package
PLUGINS_DIR = PACKAGE_DIR / "plugins"
LIBRARY_NAME = "libexporter_plugins.so"
SERVED_NAME = "libexporter_plugins.json"  # beside the library: what it serves (`served`)
HOST_TEST_NAME = "exporter_plugins_host_test"
_SERVED_PREFIX = b'{"ops": '  # how aot.render's kServedJson starts (json.dumps of aot.served)
DEFAULT_ARCHS = aot.DEFAULT_ARCHS  # why these: exporter/ops/aot.py


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
    ops: Optional[Sequence[str]] = None,
    dtypes: Optional[Sequence[str]] = None,
    kernels_cpp: Optional[Path | str] = None,
    build_dir: Optional[Path | str] = None,
    host_test: bool = False,
    werror: bool = False,
    jobs: int = 0,
) -> Path:
    """Configures and builds `plugins/` with CMake; copies `libexporter_plugins.so` into `out_dir`, writes what it
    serves beside it (`libexporter_plugins.json`) and returns the library's path.

    Args:
        out_dir: where the library (and with `host_test`, `exporter_plugins_host_test`) is copied.
        trt_include: TensorRT's include folder (default: see the module docstring).
        archs: GPU architectures (compute capability x10) of the kernels' cubins, e.g. (87, 90) (default:
            `DEFAULT_ARCHS`, 80, 86, 87, 89, 90, 100, 120; accepted: `aot.ARCHS`).
        ops: the token ops the library serves, names of `torch.ops.exporter` (those `exporter.ops.called` counts
            for a model), e.g. ["tome_merge"] (default None: every op).
        dtypes: the token dtypes it serves, "fp32" and/or "fp16": those of the bundle's graphs (default None: both).
        kernels_cpp: an already generated kernels.cpp (default: `EXPORTER_KERNELS_CPP`, else generated from the
            cubin cache; `archs`, `ops` and `dtypes` are then its own).
        build_dir: a CMake build folder to use and keep (default: a temporary one, removed afterwards).
        host_test: also build the host-side test executable (`EXPORTER_PLUGINS_TESTS`).
        werror: warnings in the plugin sources are errors.
        jobs: parallel compile jobs, cubins and C++ (default 0: the CPUs this process may use).
    """
    include = Path(trt_include) if trt_include else default_trt_include()
    kernels = Path(kernels_cpp) if kernels_cpp else _env_kernels_cpp()
    problem = missing_toolchain(include, kernels)
    if problem is not None:
        raise ExporterError(f"The TensorRT plugin library cannot be built here: {problem}.",
                            "install cmake, a C++ compiler and the CUDA toolkit, and pass trt_include= (or set "
                            "TRT_INCLUDE_DIR) to a TensorRT include folder")
    archs = checked_archs(archs)
    variants = _variants(ops, dtypes)
    jobs = jobs or len(os.sched_getaffinity(0))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="exporter-plugins-") as scratch:
        build = Path(build_dir) if build_dir else Path(scratch)
        kernels = kernels or generated_kernels(build, archs, variants, jobs)
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
    (out / SERVED_NAME).write_text(json.dumps(_served_by(library), indent=1) + "\n")
    return library


def generated_kernels(folder: Path, archs: Sequence[int], variants: Optional[list] = None, jobs: int = 0) -> Path:
    """folder/kernels.cpp holding `variants` (default: all) for `archs`, assembled from cached cubins
    (`exporter.ops.kernel_cache`: only those never compiled with these sources and this Triton are
    compiled, in `jobs` processes); rewritten only when its text changes."""
    from . import kernel_cache

    return aot.build(Path(folder), sorted(archs), variants, jobs, compile=kernel_cache.compile_all)


def served(library: Path | str) -> dict:
    """What a plugin library serves: {"ops": {op: [dtypes]}, "archs": [...]} (`aot.describe` says it in words),
    from the file beside it (written by `build_library`), else from the library's own bytes."""
    beside = Path(library).with_name(SERVED_NAME)
    if beside.is_file():
        return json.loads(beside.read_text())
    return _served_by(Path(library))


def checked_archs(archs: Optional[Sequence[int]]) -> tuple[int, ...]:
    """`archs` sorted and without repeats (None: `DEFAULT_ARCHS`); ExporterError for one Triton cannot build."""
    if archs is None:
        return DEFAULT_ARCHS
    unknown = [a for a in archs if a not in aot.ARCHS]
    if unknown or not archs:
        raise ExporterError(f"Cannot build the plugin library for GPU architectures {list(archs)}: "
                            + (f"{', '.join(map(str, unknown))} is not one it supports." if unknown else "none given."),
                            f"give compute capabilities x10 among {', '.join(map(str, aot.ARCHS))} "
                            "(e.g. 87 for Jetson Orin, 90 for H100)")
    return tuple(sorted(set(archs)))


def _variants(ops: Optional[Sequence[str]], dtypes: Optional[Sequence[str]]) -> list:
    try:
        return aot.library_variants(ops, dtypes)
    except ValueError as e:
        raise ExporterError(f"Cannot build the plugin library: {e}.",
                            "pass ops= the names exporter.ops.called counts and dtypes= fp32 and/or fp16 (None: all)")


def _served_by(library: Path) -> dict:
    """The JSON that `exporter_kernels_served()` returns, read from the library's bytes (no loading: a library
    built for another CPU is read as well)."""
    data = Path(library).read_bytes()
    start = data.find(_SERVED_PREFIX)
    if start < 0:
        raise ExporterError(f"{library} does not say what it serves: it was not built by exporter.ops.library.",
                            "rebuild it with exporter.ops.library.build_library")
    return json.loads(data[start:data.index(b"\0", start)].decode())


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
