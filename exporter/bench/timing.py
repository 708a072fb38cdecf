# SPDX-License-Identifier: Apache-2.0
"""Timing that one runtime cannot disturb in another: each runtime's models in a process of their own.

`Runtime` holds one runtime's models (onnxruntime sessions, PyTorch modules on the CPU or the GPU,
TensorRT engines) in a spawned process; while one is timed, the others wait in a blocking read with
their threads asleep (onnxruntime without spinning, OpenMP's wait policy passive), so they never fight
over the cores. `interleaved` times every candidate in turn, round by round, so a slow minute of the
machine hits them alike; compare them with medians of per-round `ratios`, and check the absolute
numbers against a run alone (`alone_note`). Used by both bench modes (`throughput`, `bundles`).
"""
from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import statistics
import time
import traceback
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import onnx
import torch

from ..runtime import engine_runner, op_reference
from ..runtime import ort as ort_runtime
from .cuda import graphed, synced


def timing_options(threads: int):
    """onnxruntime session options for timing: `threads` intra-op threads that sleep as soon as a run ends
    (no spinning), so nothing of a session keeps a core busy while another runtime is timed."""
    options = ort_runtime.session_options(threads)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class Runtime:
    """One runtime's models in a process of its own: `time(key, iterations)` returns the mean ms per call
    of `iterations` back-to-back calls, measured in that process, and `latencies` each call's ms; with
    `batch`, the calls take the first `batch` rows of `x` (every model takes all of `x` otherwise).

    `models` maps keys to what `kind` runs (`KINDS`), each timed with `threads` intra-op threads:
    - 'ort': ONNX paths, run with `timing_options(threads)` (a plugin graph's plugin nodes run the token
      ops' Python reference, `runtime.op_reference`);
    - 'torch': modules (pickled to the process), run on the CPU under no_grad with OpenMP's passive wait
      policy (its threads sleep between parallel regions);
    - 'torch-cuda-fp16', 'torch-cuda-graph-fp16': modules run in fp16 on the GPU, as module calls or as
      replays of a CUDA graph captured per batch size (`cuda.graphed`), each call synchronised;
    - 'tensorrt', 'tensorrt-rtx': (bundle, engine folder, engine.json entry) run by `runtime.engine_runner`
      (host arrays in and out: the copies are timed too).
    Use as a context manager: the process ends on exit.
    """

    def __init__(self, kind: str, models: dict, x: np.ndarray, threads: int):
        self.kind = kind
        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no thread pool inherited
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(target=_serve, args=(child, kind, models, x, threads), daemon=True)
        with _environ(OMP_WAIT_POLICY="PASSIVE"):  # read by OpenMP when the process loads torch
            self._process.start()
        child.close()
        self.pid = self._ask("pid")  # answered once the models are loaded

    def time(self, key, iterations: int, batch: Optional[int] = None) -> float:
        return statistics.fmean(self.latencies(key, iterations, batch))

    def latencies(self, key, iterations: int, batch: Optional[int] = None) -> list[float]:
        return self._ask("time", key, iterations, batch)

    def _ask(self, *message):
        self._conn.send(message)
        try:
            status, value = self._conn.recv()
        except EOFError:
            raise RuntimeError(f"the {self.kind} benchmark process died (exit code {self._process.exitcode})") from None
        if status == "error":
            raise RuntimeError(f"the {self.kind} benchmark process failed:\n{value}")
        return value

    def close(self) -> None:
        if self._process.is_alive():
            with contextlib.suppress(OSError):
                self._conn.send(("close",))
            self._process.join(timeout=60)
            if self._process.is_alive():
                self._process.kill()
        self._conn.close()

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


KINDS = ("ort", "torch", "torch-cuda-fp16", "torch-cuda-graph-fp16", "tensorrt", "tensorrt-rtx")


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    """`values` set in os.environ (what a spawned process starts with) for the block, then restored."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _serve(conn, kind: str, models: dict, x: np.ndarray, threads: int) -> None:
    """A `Runtime`'s process: load the models, then answer requests until ('close',)."""
    with contextlib.ExitStack() as stack:
        try:
            torch.set_num_threads(threads)  # also the plugin reference ops' threads in an 'ort' process
            prepare = _loaded(kind, models, threads, stack)
        except Exception:
            conn.recv()
            conn.send(("error", traceback.format_exc()))
            return
        calls = {}  # (key, batch) -> call, made on first use
        with torch.no_grad():
            while True:
                message = conn.recv()
                try:
                    if message[0] == "close":
                        return
                    if message[0] == "pid":
                        conn.send(("ok", os.getpid()))
                        continue
                    _, key, iterations, batch = message
                    if (key, batch) not in calls:
                        calls[key, batch] = prepare[key](x if batch is None else x[:batch])
                    conn.send(("ok", _latencies(calls[key, batch], iterations)))
                except Exception:
                    conn.send(("error", traceback.format_exc()))


def _loaded(kind: str, models: dict, threads: int, stack: contextlib.ExitStack) -> dict:
    """key -> a function from an input array to a call of that key's model on it (see `Runtime`)."""
    if kind == "ort":
        sessions = {key: _timing_session(path, threads) for key, path in models.items()}
        return {key: functools.partial(_ort_call, s) for key, s in sessions.items()}
    if kind == "torch":
        return {key: functools.partial(_torch_call, m.eval()) for key, m in models.items()}
    if kind in ("torch-cuda-fp16", "torch-cuda-graph-fp16"):
        torch.backends.cudnn.benchmark = True  # as timm's benchmark.py: the patch embedding gets a fast algorithm
        graph = kind == "torch-cuda-graph-fp16"
        on_gpu = {key: m.to("cuda", torch.float16).eval() for key, m in models.items()}
        return {key: functools.partial(_cuda_call, m, graph) for key, m in on_gpu.items()}
    if kind in ("tensorrt", "tensorrt-rtx"):
        runners = {key: stack.enter_context(engine_runner(*where)) for key, where in models.items()}
        return {key: functools.partial(_engine_call, r) for key, r in runners.items()}
    raise ValueError(f"unknown runtime kind {kind!r} (one of {', '.join(KINDS)})")


def _timing_session(path: Path, threads: int):
    """A session with `timing_options`; a plugin graph's plugin nodes run the reference ops."""
    options = timing_options(threads)
    if op_reference.has_plugins(onnx.load(str(path), load_external_data=False)):
        return op_reference.session(path, options=options)
    return ort_runtime.session(path, options=options)


def _ort_call(session, x: np.ndarray) -> Callable[[], object]:
    inputs = ort_runtime.feed(session, x)  # cast once, outside the timed calls
    return lambda: session.run(None, inputs)


def _torch_call(model: torch.nn.Module, x: np.ndarray) -> Callable[[], object]:
    tensor = torch.from_numpy(x)
    return lambda: model(tensor)


def _engine_call(runner: Callable[[np.ndarray], list[np.ndarray]], x: np.ndarray) -> Callable[[], object]:
    return lambda: runner(x)


def _cuda_call(model: torch.nn.Module, graph: bool, x: np.ndarray) -> Callable[[], None]:
    tensor = torch.from_numpy(x).to("cuda", torch.float16)
    return synced(graphed(model, tensor) if graph else lambda: model(tensor))


def interleaved(timers: dict, rounds: int, iterations: int, log: Callable[[str], None] = print) -> dict:
    """Milliseconds per call of every entry of `timers` (key -> function of a number of iterations returning
    the mean ms per call, or each call's ms; `local` makes one of a plain call), one value per round. After one untimed
    iteration each, every round times the entries in turn, so a slow minute of the machine hits them
    alike; compare them with medians of per-round `ratios`."""
    for timer in timers.values():
        timer(1)
    times: dict = {key: [] for key in timers}
    for r in range(rounds):
        log(f"round {r + 1}/{rounds}")
        for key, timer in timers.items():
            times[key].append(timer(iterations))
    return times


def local(fn: Callable[[], object]) -> Callable[[int], float]:
    """A timer for `interleaved` of a call made in this process."""
    return lambda iterations: mean_ms(fn, iterations)


def mean_ms(fn, iterations: int) -> float:
    """Mean milliseconds per call over `iterations` back-to-back calls."""
    start = time.perf_counter()
    for _ in range(iterations):
        fn()
    return (time.perf_counter() - start) * 1000 / iterations


def _latencies(fn, iterations: int) -> list[float]:
    """Milliseconds of each of `iterations` back-to-back calls."""
    out = []
    for _ in range(iterations):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


def ratios(slower: list[float], faster: list[float]) -> list[float]:
    """Per round, slower[r] / faster[r]."""
    return [a / b for a, b in zip(slower, faster)]


def fmt_ms(value: float) -> str:
    """Milliseconds to 0.1 ms, or 0.01 ms below 10 ms (GPU batches)."""
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def alone_note(label: str, runtimes: list[tuple[str, list[float], list[float]]]) -> str:
    """`label`'s median ms alone next to its median ms interleaved, per (runtime, alone, interleaved)."""
    parts = []
    for name, alone, together in runtimes:
        if alone and together:
            a, t = statistics.median(alone), statistics.median(together)
            parts.append(f"{name} {fmt_ms(a)} ms alone, {fmt_ms(t)} ms interleaved ({t / a - 1:+.0%})")
    return f"{label} timed alone in a fresh process: " + "; ".join(parts) + "." if parts else ""
