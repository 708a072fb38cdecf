# SPDX-License-Identifier: Apache-2.0
"""Runtimes, compute-capability targets and the GPU present.

A target is a compute capability written `sm86`. TensorRT builds for the GPU it runs on, so its
target is that GPU's; TensorRT-RTX builds on any machine (a GPU is not needed) for a named RTX
compute capability. An engine folder is `engines/<target>-<runtime>/`, e.g. `engines/sm86-tensorrt-rtx/`.
"""
from __future__ import annotations

import ctypes
import importlib
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Optional

from ..bundle import RUNTIMES
from ..errors import ExporterError

TENSORRT, TENSORRT_RTX = RUNTIMES

# what `import` loads, what to install, for the messages
MODULES = {TENSORRT: "tensorrt", TENSORRT_RTX: "tensorrt_rtx"}
INSTALL = {
    TENSORRT: "Install TensorRT on the target (JetPack ships 10.3/10.13; x86: pip install 'exporter[trt]' from NVIDIA's index)",
    TENSORRT_RTX: "Run pip install 'exporter[rtx]' (tensorrt-rtx-cu13, Linux x86-64)",
}
LABEL = {TENSORRT: "TensorRT", TENSORRT_RTX: "TensorRT-RTX"}

# The targets the tensorrt-rtx-cu13 1.7 wheel offers (trt.ComputeCapability); the installed module's
# enum is the authority when it is importable.
RTX_TARGETS_1_7 = ("sm75", "sm80", "sm86", "sm89", "sm120", "sm121")
KNOWN_GPUS = {"sm72": "Jetson Xavier", "sm87": "Jetson Orin", "sm90": "H100/H200", "sm100": "B200", "sm110": "Jetson Thor"}

_TARGET = re.compile(r"^(?:sm_?)?(\d{2,3})$|^(\d{1,2})\.(\d)$", re.IGNORECASE)


def parse_target(text: str) -> str:
    """'sm86', 'SM_86', '86' or '8.6' -> 'sm86'; anything else is a usage error."""
    m = _TARGET.match(text.strip())
    if not m:
        raise ExporterError(
            f"--target '{text}' is not a compute capability.",
            "Write it as sm<major><minor>, e.g. --target sm86 (RTX 30xx) or --target sm89 (RTX 40xx).",
        )
    return "sm" + (m.group(1) or m.group(2) + m.group(3))


def capability(major: int, minor: int) -> str:
    return f"sm{major}{minor}"


def check_runtime_name(runtime: str) -> str:
    if runtime not in RUNTIMES:
        raise ExporterError(f"--runtime '{runtime}' is not one of {', '.join(RUNTIMES)}.",
                            "Use --runtime tensorrt on the target GPU, or --runtime tensorrt-rtx to build for an RTX GPU anywhere.")
    return runtime


def import_runtime(runtime: str):
    """The runtime's Python module, or a usage error saying it is missing and how to install it."""
    try:
        return importlib.import_module(MODULES[runtime])
    except ImportError:
        raise ExporterError(f"{LABEL[runtime]} is not installed here (no `{MODULES[runtime]}` module).",
                            INSTALL[runtime] + ".") from None


def rtx_targets(trt) -> tuple[str, ...]:
    """The targets this TensorRT-RTX module can build for (its ComputeCapability enum)."""
    names = [n for n in dir(trt.ComputeCapability) if re.fullmatch(r"SM\d+", n)]
    return tuple(sorted((n.lower() for n in names), key=lambda s: int(s[2:])))


def check_rtx_target(target: str, offered: tuple[str, ...], version: str) -> None:
    if target in offered:
        return
    gpu = f" ({KNOWN_GPUS[target]})" if target in KNOWN_GPUS else ""
    raise ExporterError(
        f"TensorRT-RTX {version} cannot build for {target}{gpu}; it offers {', '.join(offered)}.",
        f"Pick one of those with --target, or build on the {target} GPU itself with --runtime tensorrt.",
    )


@dataclass(frozen=True)
class Gpu:
    name: str
    target: str  # e.g. sm87


def gpu_present() -> Optional[Gpu]:
    """The first CUDA GPU here, or None: torch when it has CUDA, else the CUDA driver (a Jetson's PyPI
    torch is CPU-only, and JetPack 6 has no nvidia-smi), else nvidia-smi."""
    try:
        import torch  # inside the try: a target's torch may fail to load, the driver is asked next

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return Gpu(torch.cuda.get_device_name(0), capability(major, minor))
    except Exception:  # a broken CUDA install is "no GPU" here; the caller says so
        pass
    return _driver_gpu() or _smi_gpu()


# CUdevice_attribute values from cuda.h (stable since CUDA 3)
_CC_MAJOR, _CC_MINOR = 75, 76


def _driver_gpu(library: str = "libcuda.so.1") -> Optional[Gpu]:
    """Device 0 through the CUDA driver API (cuInit, cuDeviceGet, cuDeviceGetName, cuDeviceGetAttribute)."""
    try:
        cuda = ctypes.CDLL(library)
    except OSError:
        return None
    device, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    name = ctypes.create_string_buffer(256)
    calls = (
        lambda: cuda.cuInit(0),
        lambda: cuda.cuDeviceGet(ctypes.byref(device), 0),
        lambda: cuda.cuDeviceGetName(name, 256, device),
        lambda: cuda.cuDeviceGetAttribute(ctypes.byref(major), _CC_MAJOR, device),
        lambda: cuda.cuDeviceGetAttribute(ctypes.byref(minor), _CC_MINOR, device),
    )
    if any(call() != 0 for call in calls):  # CUDA_SUCCESS is 0; e.g. 100 = no device
        return None
    return Gpu(name.value.decode(errors="replace"), capability(major.value, minor.value))


def _smi_gpu() -> Optional[Gpu]:
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20).stdout.strip().splitlines()
        except (OSError, subprocess.SubprocessError):
            out = []
        if out and "," in out[0]:
            name, cc = (s.strip() for s in out[0].rsplit(",", 1))
            if re.fullmatch(r"\d+\.\d", cc):
                return Gpu(name, parse_target(cc))
    return None


def folder(target: str, runtime: str) -> str:
    """engines/<this>/ for a target and runtime."""
    return f"{target}-{runtime}"


FP8_SINCE = 89  # fp8 tensor cores: Ada (sm89), Hopper (sm90), Blackwell; not Ampere (sm80/86) nor Jetson Orin (sm87)


def check_precision(precision: str, target: str) -> None:
    """An fp8 graph needs a GPU with fp8 tensor cores; a usage error before any build starts."""
    if precision == "fp8" and int(target.removeprefix("sm")) < FP8_SINCE:
        raise ExporterError(f"{target} has no fp8 tensor cores (they start at sm89), so TensorRT cannot build the fp8 graph "
                            "for it.",
                            "Build the int8 graph (--graph int8; a bundle built with --precision int8) for it, or target "
                            "sm89 or later (RTX 40xx, H100, Blackwell).")
