# SPDX-License-Identifier: Apache-2.0
"""Which mode Triton runs in, in this process: triton.language's own functions (tl.zeros, tl.sum, ...) become
interpreted or compiled when triton is first imported, as TRITON_INTERPRET says then. The kernel modules
(`_triton.py` through this package, `hilo_attention.py`) ask here before they import or decorate anything."""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Optional


def triton_mode() -> Optional[str]:
    """"interpreter" or "jit": how triton was imported in this process; None before it is imported."""
    if "triton.language" not in sys.modules:
        return None
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction

    return "interpreter" if isinstance(tl.zeros, InterpretedFunction) else "jit"


@contextlib.contextmanager
def interpreting(value: Optional[str] = "1"):
    """TRITON_INTERPRET=1 while kernels are imported, decorated and run: triton.jit and parts of the
    interpreter read it then (e.g. gluon's import asserts it). value=None: unset (compiled mode)."""
    before = os.environ.pop("TRITON_INTERPRET", None)
    if value is not None:
        os.environ["TRITON_INTERPRET"] = value
    try:
        yield
    finally:
        os.environ.pop("TRITON_INTERPRET", None)
        if before is not None:
            os.environ["TRITON_INTERPRET"] = before
