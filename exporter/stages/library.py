"""The plugin library's build into a bundle, for `build --plugins`."""
from __future__ import annotations

from pathlib import Path

from ..bundle import PLUGIN_LIBRARY
from ..ops import library


def build_plugin_library(bundle: Path) -> dict:
    """Compile the plugin library into `bundle`/plugins (needs cmake, nvcc and TensorRT headers), or say
    why not: the plugin graphs are still written and verified, only the TensorRT-RTX build is skipped."""
    reason = library.missing_toolchain()
    if reason:
        return {"status": "skipped", "reason": reason}
    built = library.build_library(bundle / Path(PLUGIN_LIBRARY).parent)
    return {"status": "built", "file": built.relative_to(bundle).as_posix()}
