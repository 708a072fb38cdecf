# SPDX-License-Identifier: Apache-2.0
"""The plugin library's build into a bundle, for `build --plugins`."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from ..bundle import PLUGIN_LIBRARY
from ..bundle.trust import allow
from ..ops import aot, library


def build_plugin_library(bundle: Path, ops: Sequence[str], dtypes: Sequence[str],
                         archs: Optional[Sequence[int]] = None) -> dict:
    """Compile the plugin library into `bundle`/plugins (needs cmake, nvcc and TensorRT headers) with the kernels of
    the token `ops` the model calls, for the token `dtypes` of its plugin graphs and the GPU `archs` (None: the
    library's default), or say why not: the plugin graphs are still written and verified, only the TensorRT-RTX
    build is skipped. The library compiled here is trusted for this run's TensorRT-RTX check (`bundle.trust`)."""
    reason = library.missing_toolchain()
    if reason:
        return {"status": "skipped", "reason": reason}
    built = library.build_library(bundle / Path(PLUGIN_LIBRARY).parent, archs=archs, ops=sorted(ops), dtypes=sorted(dtypes))
    allow(bundle, "compiled by this build")  # the builder's own code, not received: its TensorRT-RTX check loads it
    return {"status": "built", "file": built.relative_to(bundle).as_posix(),
            "serves": aot.describe(library.served(built))}
