# SPDX-License-Identifier: Apache-2.0
"""Which mode Triton runs in, in this process: triton.language's own functions (tl.zeros, tl.sum, ...) become
interpreted or compiled when triton is first imported, as TRITON_INTERPRET says then. The kernel modules
(`_triton.py` through this package, `hilo_attention.py`) ask here before they import or decorate anything."""
from __future__ import annotations

import contextlib
import os
import sys
import threading
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


def decorate(fn, interpret: bool, what: str):
    """triton.jit of the plain function `fn` (a kernel module's, whose body resolves `tl` as a module global),
    compiled or interpreted. Triton fixes its mode when first imported (its own jit functions, tl.max and
    tl.sum, are interpreted only if TRITON_INTERPRET=1 then): the first call imports it in the mode it needs,
    and a call needing the other mode raises (run it in a fresh process)."""
    mode = triton_mode()
    if mode is None:
        with interpreting() if interpret else contextlib.nullcontext():
            import triton.language  # noqa: F401
        mode = triton_mode()
    if (mode == "interpreter") != interpret:
        raise RuntimeError(f"{what} on {'CPU' if interpret else 'CUDA'} tensors needs Triton in "
                           f"{'interpreter' if interpret else 'compiled'} mode, but this process imported it in "
                           f"{mode} mode: call it in a fresh process (TRITON_INTERPRET=1 for the interpreter)")
    import triton
    import triton.language as tl

    fn.__globals__["tl"] = tl  # what the kernel's body resolves `tl` to
    if not interpret:
        return triton.jit(fn)
    with interpreting():
        import triton.experimental.gluon  # noqa: F401  (else imported by the interpreter while tl is patched)

        return triton.jit(fn)


def cached(fn, what: str):
    """The kernel's `jit_kernel(interpret=False)`: `decorate(fn, interpret, what)` made once per mode and kept, for
    the kernel modules that launch one plain function (hilo_attention, biased_attention)."""
    made: dict[bool, object] = {}
    lock = threading.Lock()

    def jit_kernel(interpret: bool = False):
        """The Triton kernel: JIT-compiled (CUDA tensors, cubins) or interpreted (CPU tensors)."""
        with lock:
            if interpret not in made:
                made[interpret] = decorate(fn, interpret, what)
            return made[interpret]

    return jit_kernel
