# SPDX-License-Identifier: Apache-2.0
"""Whether this machine can build the plugin library, judged from the facts themselves (not from
`library.missing_toolchain`, which tests must be able to catch lying): where they all hold, a
`--plugins` build must produce the library."""
import importlib.util
import os
import shutil
from pathlib import Path

SHARED_HEADERS = Path(__file__).resolve().parents[2] / "shared" / "third_party" / "tensorrt"


def _trt_headers() -> bool:
    if os.environ.get("TRT_INCLUDE_DIR"):
        return (Path(os.environ["TRT_INCLUDE_DIR"]) / "NvInferRuntime.h").is_file()
    root = Path(os.environ.get("EXPORTER_TRT_HEADERS") or SHARED_HEADERS)
    return any(root.glob("*/include/NvInferRuntime.h"))


def plugins_buildable() -> bool:
    nvcc = shutil.which("nvcc") or any(Path(r, "bin", "nvcc").is_file() for r in
                                        (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda") if r)
    return bool(shutil.which("cmake") and (shutil.which("c++") or shutil.which("g++")) and nvcc and _trt_headers()
                and importlib.util.find_spec("triton"))
