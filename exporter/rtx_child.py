# SPDX-License-Identifier: Apache-2.0
"""Run one function in a child process that can open `libtensorrt_rtx.so` (a TensorRT-RTX wheel workaround).

The `tensorrt-rtx` 1.7 wheel's ONNX parser opens `libtensorrt_rtx.so` when it meets a plugin node, but the
wheel ships only `tensorrt_rtx_libs/libtensorrt_rtx.so.1`, and the process aborts. The dynamic loader reads
LD_LIBRARY_PATH once, at process start, so the fix cannot be applied in the running process: `run` starts
`python -m exporter.rtx_child` with a temporary folder holding a symlink of that name first on its
LD_LIBRARY_PATH (site-packages is left alone). The child imports the named function, calls it with a JSON
request and prints its JSON answer, or the ExporterError it raised, as one line on stdout; the parent gets
both back with the child's stderr, where TensorRT-RTX and the plugin library write what its logger misses.
Used by `exporter.engine.network.build_in_child`: the TensorRT-RTX check's plugin graphs, and
`engine --graph plugins --runtime tensorrt-rtx`.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .errors import ExporterError
from .interrupt import end_with_parent, leave, owner

LINK = "libtensorrt_rtx.so"
TEMP_PREFIX = "exporter-rtx-"  # + `interrupt.owner()`: a killed parent's folder is swept by the next run (sweep_stale)
_PARENT = "EXPORTER_RTX_PARENT"  # the parent's pid, for the child to end with it
_ANSWER = "RTXCHILD "
_ERROR = "RTXCHILD-ERROR "
PLUGIN_MESSAGE = ("[E] [exporter", "[F] [exporter")  # the plugin library's errors when TensorRT gives it no logger
TRACE = "[exporter plugins] trace "  # EXPORTER_PLUGINS_TRACE=1: one line per plugin method TensorRT calls


@dataclass
class Child:
    """What the child process left: the function's answer, or the ExporterError it raised, or neither."""

    answer: Optional[dict]
    error: Optional[ExporterError]
    returncode: int
    stderr: str

    def plugin_messages(self) -> list[str]:
        """The plugin library's error messages that no TensorRT logger got, without their severity tag (with
        EXPORTER_PLUGINS_TRACE set, it also copies the logged ones to stderr, marked "(also logged)")."""
        return [line[4:] for line in self.stderr.splitlines()
                if line.startswith(PLUGIN_MESSAGE) and not line.endswith("(also logged)")]

    def death(self) -> str:
        """How the child ended without an answer, e.g. "was killed by SIGABRT (its last message: '...')"."""
        rc = self.returncode
        how = f"was killed by {signal.Signals(-rc).name}" if rc < 0 else f"ended with exit status {rc}"
        lines = [line.strip() for line in self.stderr.splitlines() if line.strip() and TRACE not in line]
        return how + (f" (its last message: {lines[-1]!r})" if lines else " (no message)")


def wheel_libs() -> Optional[Path]:
    """The wheel's `tensorrt_rtx_libs` folder, or None."""
    spec = importlib.util.find_spec("tensorrt_rtx_libs")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def link_resolvable() -> bool:
    """Whether this process's parser would find `libtensorrt_rtx.so`: beside the wheel's .so.1 (a user's symlink) or
    in a folder of LD_LIBRARY_PATH."""
    libs = wheel_libs()
    folders = [Path(d) for d in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if d]
    return any((d / LINK).exists() for d in ([libs] if libs else []) + folders)


def run(function: str, request: dict, what: str, timeout_s: Optional[float] = None,
        env: Optional[dict[str, str]] = None) -> Child:
    """Call `function` ("package.module:name", taking the JSON-able `request`, returning a JSON-able dict) in a child
    process that can open `libtensorrt_rtx.so`, and wait for it. `what` names the work for the errors, e.g. "the
    TensorRT-RTX check".

    Raises ExporterError when the wheel has no .so.1 to link to, or the child runs over `timeout_s`.
    """
    with start(function, request, what, timeout_s, env) as running:
        return running.wait()


def start(function: str, request: dict, what: str, timeout_s: Optional[float] = None,
          env: Optional[dict[str, str]] = None) -> "Running":
    """`run`'s child, started and left running while the caller goes on: `Running.wait` for what it left."""
    libs = wheel_libs()
    if libs is None or not (libs / f"{LINK}.1").is_file():
        raise ExporterError(f"The tensorrt_rtx wheel has no tensorrt_rtx_libs/{LINK}.1 for {what} to link to.",
                            "Reinstall it: pip install --force-reinstall tensorrt-rtx-cu13.")
    folder = tempfile.TemporaryDirectory(prefix=f"{TEMP_PREFIX}{owner()}-")
    (Path(folder.name) / LINK).symlink_to(libs / f"{LINK}.1")
    child_env = {**os.environ, **(env or {})}
    child_env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (folder.name, child_env.get("LD_LIBRARY_PATH", "")) if p)
    package_root = str(Path(__file__).resolve().parents[1])  # this checkout's exporter, not another install
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, child_env.get("PYTHONPATH", "")) if p)
    child_env[_PARENT] = str(os.getpid())
    # its output goes to files, not pipes: a child left running fills no pipe buffer while nobody reads it
    out, err = (open(Path(folder.name) / name, "w+", encoding="utf-8", errors="replace") for name in ("stdout", "stderr"))
    process = subprocess.Popen([sys.executable, "-m", "exporter.rtx_child", function, json.dumps(request)],
                               env=child_env, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
    return Running(process, folder, out, err, what, timeout_s)


class Running:
    """A child `start`ed: `wait` for what it left (once), or `kill` it; its temporary folder goes with either. As a
    context manager, leaving it (an error, Ctrl-C while waiting) kills a child still running."""

    def __init__(self, process: subprocess.Popen, folder: tempfile.TemporaryDirectory, out, err, what: str,
                 timeout_s: Optional[float]):
        self.process, self._folder, self._out, self._err = process, folder, out, err
        self._what, self._timeout_s = what, timeout_s
        self._deadline = None if timeout_s is None else time.monotonic() + timeout_s

    def __enter__(self) -> "Running":
        return self

    def __exit__(self, *exc) -> None:
        self.kill()

    def wait(self) -> Child:
        """What the child left; ExporterError when it ran over its time (it is killed)."""
        try:
            self.process.wait(None if self._deadline is None else max(0.0, self._deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.kill()
            raise ExporterError(f"{self._what[0].upper() + self._what[1:]} took over {self._timeout_s:.0f} s and was "
                                "stopped.",
                                "Check the graph with `python -m exporter verify`, or build on a faster machine.") from None
        stdout, stderr = (self._read(f) for f in (self._out, self._err))
        self._folder.cleanup()
        answers = [line for line in stdout.splitlines() if line.startswith((_ANSWER, _ERROR))]
        if not answers:
            return Child(None, None, self.process.returncode, stderr)
        if answers[-1].startswith(_ERROR):
            error = json.loads(answers[-1][len(_ERROR):])
            return Child(None, ExporterError(error["problem"], error["fix"]), self.process.returncode, stderr)
        return Child(json.loads(answers[-1][len(_ANSWER):]), None, self.process.returncode, stderr)

    def kill(self) -> None:
        """Stop the child if it still runs, and remove its folder."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for f in (self._out, self._err):
            f.close()
        self._folder.cleanup()

    @staticmethod
    def _read(f) -> str:
        f.seek(0)
        text = f.read()
        f.close()
        return text


def _main(argv: list[str]) -> int:
    """The child: call the function on the request, print its answer (or its ExporterError) as one line."""
    if os.environ.get(_PARENT):
        end_with_parent(int(os.environ[_PARENT]))
    module, name = argv[0].split(":")
    function = getattr(importlib.import_module(module), name)
    try:
        answer = function(json.loads(argv[1]))
    except ExporterError as e:
        print(_ERROR + json.dumps({"problem": e.problem, "fix": e.fix}), flush=True)
        return 2
    print(_ANSWER + json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    leave(_main(sys.argv[1:]))
