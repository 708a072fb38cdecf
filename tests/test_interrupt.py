# SPDX-License-Identifier: Apache-2.0
"""Interruption (issue 13 §3): SIGTERM cleans up like Ctrl-C; a killed build's leftovers are swept by the
next one; two processes finishing the same spec at once both succeed and leave one intact bundle."""
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from exporter import bundle as artifacts
from exporter import interrupt

ROOT = Path(__file__).resolve().parents[1]


def start_build(out: Path, tmp: Path) -> subprocess.Popen:
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "exporter", "build", "--model", "test_vit", "--weights", "random", "--batch", "2", "--out", str(out)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(predicate, proc, timeout=240.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def hidden(out: Path):
    return [p for p in out.iterdir() if p.name.startswith(".")] if out.exists() else []


def debug_dirs(tmp: Path):
    return [p for p in tmp.iterdir() if p.name.startswith(artifacts.DEBUG_PREFIX)]


@pytest.fixture
def dirs(tmp_path):
    out, tmp = tmp_path / "out", tmp_path / "tmp"
    tmp.mkdir()
    return out, tmp


def test_sigterm_cleans_up_like_ctrl_c(dirs):
    out, tmp = dirs
    proc = start_build(out, tmp)
    wait_for(lambda: hidden(out) and debug_dirs(tmp), proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "interrupted (SIGTERM)" in err and "Traceback" not in err
    assert list(out.iterdir()) == [] and debug_dirs(tmp) == []


def test_sigkill_leftovers_are_swept_by_the_next_build(dirs, monkeypatch):
    out, tmp = dirs
    proc = start_build(out, tmp)
    wait_for(lambda: hidden(out) and debug_dirs(tmp), proc)
    proc.kill()
    proc.communicate()
    leftovers = hidden(out) + debug_dirs(tmp)
    assert leftovers  # SIGKILL cannot be caught
    owner = interrupt.owner()
    alive = out / f".other-run.{owner}.abcd1234.partial"  # a build still running: not swept
    elsewhere = out / f".other-run.{leftovers[0].name.split('.')[-3].split('@')[0]}@00000000.abcd1234.partial"  # another host's
    alive.mkdir()
    elsewhere.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    with artifacts.staging(out, "next") as staging:  # what a build starts with
        assert not any(p.exists() for p in leftovers) and alive.exists() and elsewhere.exists()
        (staging / "manifest.json").write_text("{}")
    assert (out / "next" / "manifest.json").exists()


RACE = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from exporter import bundle as artifacts
    out, at = Path(sys.argv[1]), float(sys.argv[2])
    with artifacts.staging(out, "run") as tmp:
        (tmp / "model.onnx").write_bytes(b"graph" * 1000)
        (tmp / "report.md").write_text("took " + sys.argv[3])
        (tmp / "manifest.json").write_text('{"exporter_version": "0", "git_commit": "c", "took": "%s"}' % sys.argv[3])
        time.sleep(max(0.0, at - time.time()))
    print("ok")
""")


def test_two_processes_finishing_the_same_spec_at_once(tmp_path):
    """Both succeed quietly; one bundle in place, byte-identical graphs, no hidden copy left."""
    script = tmp_path / "race.py"
    script.write_text(RACE)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for trial in range(5):
        out = tmp_path / f"out{trial}"
        at = time.time() + 2.0
        procs = [subprocess.Popen([sys.executable, str(script), str(out), str(at), str(i)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
        results = [p.communicate(timeout=60) for p in procs]
        for p, (stdout, stderr) in zip(procs, results):
            assert p.returncode == 0 and stdout.strip() == "ok", stderr
        assert [p.name for p in out.iterdir()] == ["run"]
        assert (out / "run" / "model.onnx").read_bytes() == b"graph" * 1000
        took = json.loads((out / "run" / "manifest.json").read_text())["took"]
        assert (out / "run" / "report.md").read_text() == "took " + took  # one build's files, not a mix


def test_a_different_bundle_in_place_is_replaced(tmp_path):
    out = tmp_path / "out"
    for content in (b"old", b"new"):
        with artifacts.staging(out, "run") as tmp:
            (tmp / "model.onnx").write_bytes(content)
            (tmp / "manifest.json").write_text('{"exporter_version": "0", "git_commit": "c"}')
    assert (out / "run" / "model.onnx").read_bytes() == b"new" and [p.name for p in out.iterdir()] == ["run"]


def test_the_loser_of_a_finishing_race_succeeds_quietly(tmp_path, monkeypatch):
    """Deterministic version of the race: the winner's identical bundle appears just before our rename."""
    out = tmp_path / "out"
    real_replace = os.replace

    def winner_first(src, dst):
        if Path(dst) == out / "run" and not Path(dst).exists():
            winner = Path(tempfile.mkdtemp(dir=out))
            for f in Path(src).iterdir():
                (winner / f.name).write_bytes(f.read_bytes())
            real_replace(winner, dst)
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", winner_first)
    with artifacts.staging(out, "run") as tmp:
        (tmp / "model.onnx").write_bytes(b"graph")
        (tmp / "manifest.json").write_text('{"exporter_version": "0", "git_commit": "c"}')
    assert [p.name for p in out.iterdir()] == ["run"] and (out / "run" / "model.onnx").read_bytes() == b"graph"


# Issue 22 hole 5: a signal during the TensorRT-RTX stage arrived inside TensorRT's logger callback, whose bindings
# swallowed the exception: the run went on, exited 0 and published the bundle. The checks now run in child processes
# (`verify.rtx_checks`); HOLD runs the exporter held where it waits for them, every child running (a file says so),
# until the test has sent the signal: the run must end, its children stopped and their folders gone.
HOLD = textwrap.dedent("""
    import os, runpy, signal, sys, time
    from pathlib import Path
    from exporter.engine import rtx_check
    ready, sent = Path(os.environ["HOLD_READY"]), Path(os.environ["HOLD_SENT"])
    result = rtx_check.PendingCheck.result

    def holding_result(self):
        if not ready.exists():
            ready.touch()
            deadline = time.monotonic() + 120
            while not sent.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.2)  # the signal is delivered here, the TensorRT-RTX children running
        return result(self)

    rtx_check.PendingCheck.result = holding_result
    # Ctrl-C's handler, as an interactive shell starts a command with: a test run in the background by a shell
    # without job control would hand this child SIGINT ignored, and an ignored signal must not stop the run
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.argv = ["exporter", *sys.argv[1:]]
    runpy.run_module("exporter", run_name="__main__")
""")


# `engine` builds in this process (TensorRT, or TensorRT-RTX for a standard graph): held inside TensorRT's logger
# callback, as hole 5 was found
HOLD_LOGGER = textwrap.dedent("""
    import os, runpy, signal, sys, time
    from pathlib import Path
    from exporter.engine import network
    ready, sent = Path(os.environ["HOLD_READY"]), Path(os.environ["HOLD_SENT"])
    made = network.error_logger

    def holding_logger(trt):
        logger = made(trt)
        log = type(logger).log

        def hold(self, severity, msg):
            if not ready.exists():
                ready.touch()
                deadline = time.monotonic() + 120
                while not sent.exists() and time.monotonic() < deadline:
                    time.sleep(0.05)
                time.sleep(0.2)  # the signal is delivered inside this callback
            log(self, severity, msg)

        type(logger).log = hold
        return logger

    network.error_logger = holding_logger
    # Ctrl-C's handler, as an interactive shell starts a command with: a test run in the background by a shell
    # without job control would hand this child SIGINT ignored, and an ignored signal must not stop the run
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.argv = ["exporter", *sys.argv[1:]]
    runpy.run_module("exporter", run_name="__main__")
""")

@pytest.fixture(scope="module")
def rtx_bundle(tmp_path_factory):
    pytest.importorskip("tensorrt_rtx")
    from exporter.cli import main

    out = tmp_path_factory.mktemp("rtx")
    assert main(["build", "--model", "test_vit", "--weights", "random", "--batch", "2", "--out", str(out)]) == 0
    (bundle,) = [p for p in out.iterdir() if not p.name.startswith(".")]
    return bundle


@pytest.mark.parametrize("command,sig", [("build", signal.SIGTERM), ("build", signal.SIGINT), ("verify", signal.SIGTERM),
                                         ("engine", signal.SIGTERM)])
def test_a_signal_during_the_tensorrt_rtx_stage_ends_the_run(dirs, rtx_bundle, command, sig):
    out, tmp = dirs
    ready, sent = tmp / "ready", tmp / "sent"
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           "HOLD_READY": str(ready), "HOLD_SENT": str(sent)}
    args = {"build": ["build", "--model", "test_vit", "--weights", "random", "--batch", "2", "--out", str(out)],
            "verify": ["verify", str(rtx_bundle), "--report", str(tmp / "verify.json")],
            "engine": ["engine", str(rtx_bundle), "--runtime", "tensorrt-rtx", "--target", "sm86"]}[command]
    hold = HOLD_LOGGER if command == "engine" else HOLD
    proc = subprocess.Popen([sys.executable, "-c", hold, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(ready.exists, proc)
    proc.send_signal(sig)
    sent.touch()
    stdout, err = proc.communicate(timeout=240)
    assert proc.returncode == 128 + sig, (stdout, err)
    assert "interrupted" in err and "Traceback" not in err and "PASSED" not in stdout
    assert not (tmp / "verify.json").exists()
    assert (list(out.iterdir()) if out.exists() else []) == [] and debug_dirs(tmp) == []
    assert [p for p in tmp.iterdir() if p.name.startswith("exporter-rtx-")] == []
    assert not list(rtx_bundle.rglob("*.engine"))  # engine: no plan written


def test_a_killed_runs_rtx_folders_are_swept(tmp_path, monkeypatch):
    """SIGKILL leaves the child's folder (named with the parent's pid); the next run removes it, not a live one's."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = interrupt.owner().split("@")[1]
    gone = tmp_path / f"exporter-rtx-{dead.pid}@{host}-abcd1234"
    live = tmp_path / f"exporter-rtx-{interrupt.owner()}-abcd1234"
    old = tmp_path / "exporter-rtx-abcd1234"  # an older exporter's (no pid): swept once a day old
    for d in (gone, live, old):
        d.mkdir()
    os.utime(old, (time.time() - 2 * artifacts.files.LEGACY_AGE_S,) * 2)
    assert set(artifacts.sweep_stale()) == {gone, old} and live.exists()


def hold_in_child(request: dict) -> dict:
    """Run by `rtx_child` in the child process: say who it is, then wait to be killed."""
    Path(request["ready"]).write_text(str(os.getpid()))
    time.sleep(300)
    return {}


KILLED_PARENT = textwrap.dedent("""
    import sys
    from exporter import rtx_child
    rtx_child.run("test_interrupt:hold_in_child", {"ready": sys.argv[1]}, "the test's child")
""")


def test_a_sigkilled_parents_rtx_child_dies_and_its_folder_is_swept(tmp_path, monkeypatch):
    pytest.importorskip("tensorrt_rtx")
    ready = tmp_path / "ready"
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    parent = subprocess.Popen([sys.executable, "-c", KILLED_PARENT, str(ready)], env=env)
    wait_for(lambda: ready.exists() and ready.read_text(), parent, timeout=120)
    child = int(ready.read_text())
    folders = [p for p in tmp_path.iterdir() if p.name.startswith("exporter-rtx-")]
    parent.kill()
    parent.wait()

    def running() -> bool:
        with contextlib.suppress(OSError):
            return b"rtx_child" in Path(f"/proc/{child}/cmdline").read_bytes()
        return False

    deadline = time.monotonic() + 30
    try:
        while running():
            assert time.monotonic() < deadline, "the RTX child outlived its SIGKILLed parent"
            time.sleep(0.1)
    finally:
        if running():
            os.kill(child, signal.SIGKILL)  # a failed test leaves no orphan
    assert len(folders) == 1 and folders[0].exists()  # SIGKILL cannot be caught: the next run sweeps it
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert artifacts.sweep_stale() == folders and not folders[0].exists()


def test_a_signal_the_process_ignores_is_not_held():
    """A run started with SIGINT ignored (a background job of a shell without job control) keeps ignoring it while
    a TensorRT build is held: the build is not cancelled, and nothing is raised on the way out."""
    from exporter import interrupt

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with interrupt.held() as pending:
            signal.raise_signal(signal.SIGINT)
            assert pending == []
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
