# SPDX-License-Identifier: Apache-2.0
"""Ctrl-C and SIGTERM end a run the same way: cleanup runs on the way out, then one line, exit 128 + signal.

SIGTERM (what `kill`, `timeout` and job schedulers send) is turned into a KeyboardInterrupt subclass,
so every `finally`/`except BaseException` that cleans up after Ctrl-C (the staging directory, the debug
graphs) cleans up after it too. Native code that calls back into Python would swallow the exception: around it,
`held` records the signal and delivers it again when the native call returns. SIGKILL cannot be caught: its
leftovers are swept by the next run (bundle.sweep_stale, folders named with `owner`).
"""
from __future__ import annotations

import contextlib
import ctypes
import gc
import hashlib
import os
import signal
import socket
import sys
import threading
from typing import Iterator, NoReturn


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process receives `signum` (SIGTERM, SIGHUP)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise(signum, frame):
    signal.signal(signum, signal.SIG_IGN)  # a second one must not interrupt the cleanup; restored on exit
    raise Terminated(signum)


@contextlib.contextmanager
def terminate_as_interrupt(signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGHUP)) -> Iterator[None]:
    """Within the block, `signals` raise Terminated; the previous handlers are restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _raise) for s in signals}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def held(signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)) -> Iterator[list[int]]:
    """Within the block, `signals` are recorded (in the yielded list) instead of handled, and delivered again
    on leaving it, to the handlers that were there before (so Ctrl-C and SIGTERM still end the run, as
    Terminated or KeyboardInterrupt).

    For native code that calls back into Python (TensorRT's logger and progress monitor): a handler that raises
    inside such a callback has its exception swallowed by the bindings, and the run would go on as if nothing
    had happened. The block can poll the list to stop the native work early (a progress monitor that cancels).
    """
    if threading.current_thread() is not threading.main_thread():
        yield []
        return
    pending: list[int] = []
    # a signal this process ignores stays ignored (a background job started by a shell without job control
    # ignores SIGINT, `nohup` SIGHUP): holding it would cancel a build nobody asked to stop
    signals = tuple(s for s in signals if signal.getsignal(s) is not signal.SIG_IGN)
    previous = {s: signal.signal(s, lambda signum, frame: pending.append(signum)) for s in signals}
    try:
        yield pending
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if pending:
            signal.raise_signal(pending[0])  # the previous handler runs now, outside the native code


def owner() -> str:
    """`<pid>@<host hash>`: who is working in a temporary or hidden directory, so that a later run on the same
    host can tell the leftovers of a killed process (SIGKILL, power loss) from those of one still running."""
    return f"{os.getpid()}@{hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]}"


def end_with_parent(parent: int) -> None:
    """In a child process: have the kernel kill it when its parent (pid `parent`) dies, so a SIGKILLed command
    leaves no TensorRT-RTX build or export running. Linux's PR_SET_PDEATHSIG; where there is none, the parent's
    interrupt still ends the child."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the prctl
        os._exit(128 + signal.SIGKILL)


def exit_code(e: KeyboardInterrupt) -> int:
    return 128 + getattr(e, "signum", signal.SIGINT)


def interrupted_message(e: KeyboardInterrupt) -> str:
    name = signal.Signals(getattr(e, "signum", signal.SIGINT)).name
    how = "Ctrl-C" if name == "SIGINT" else name
    return f"interrupted ({how}): temporary files removed, nothing was written."


def leave(code: int) -> NoReturn:
    """End this process with exit status `code`, its objects left out of the interpreter's last garbage collection
    (`gc.freeze`). Walking everything torch, onnx and onnxscript allocated took 2.7 s of one core after a DeiT-S build
    had printed its result, and about 1.5 s at the end of a second export process, taken from the build's next
    stages; a finished process needs nothing from it (atexit handlers still run, and its files are closed)."""
    gc.freeze()
    sys.exit(code)
