# SPDX-License-Identifier: Apache-2.0
"""Ctrl-C and SIGTERM end a run the same way: cleanup runs on the way out, then one line, exit 128 + signal.

SIGTERM (what `kill`, `timeout` and job schedulers send) is turned into a KeyboardInterrupt subclass,
so every `finally`/`except BaseException` that cleans up after Ctrl-C (the staging directory, the debug
graphs) cleans up after it too. SIGKILL cannot be caught: its leftovers are swept by the next build
(bundle.sweep_stale).
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator


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


def exit_code(e: KeyboardInterrupt) -> int:
    return 128 + getattr(e, "signum", signal.SIGINT)


def interrupted_message(e: KeyboardInterrupt) -> str:
    name = signal.Signals(getattr(e, "signum", signal.SIGINT)).name
    how = "Ctrl-C" if name == "SIGINT" else name
    return f"interrupted ({how}): temporary files removed, nothing was written."
