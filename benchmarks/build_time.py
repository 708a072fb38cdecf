# SPDX-License-Identifier: Apache-2.0
"""How long `python -m exporter build` takes: each method's default DeiT-S fp16 bundle (random weights), built in a
fresh process one at a time, with the manifest's stage times.

    python benchmarks/build_time.py [--methods none,evit,evovit,diffrate,tome] [--rounds 1] [--out DIR]
                                    [--plugins [--cold]]

Prints the machine's cores and load average at the start (a build's wall time is only comparable on an idle
machine, or back to back with another run on the same one), then per build its wall time, the CPU time of the
build process (user + system, all its threads: what the load of other processes inflates least), and the
manifest's `stages_seconds`. With several `--rounds` the methods alternate (one build of each per round), so a
change in the machine's load spreads over all of them. The bundles go to `--out` (default: a temporary
directory, removed at the end).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METHODS = ("none", "evit", "evovit", "diffrate", "tome")
MODEL = "deit_small_patch16_224"


def build(method: str, out: Path, plugins: bool = False, cold: bool = False) -> dict:
    """One build in a fresh process: wall and CPU seconds, and the manifest's stage times. With `plugins`, the build
    makes the plugin graphs and library; `cold`, with empty caches (the project's cubins in XDG_CACHE_HOME, and
    Triton's TRITON_CACHE_DIR), as a first build on a new machine."""
    command = [sys.executable, "-m", "exporter", "build", "--model", MODEL, "--weights", "random", "--method", method,
               "--precision", "fp16", "--out", str(out)] + (["--plugins"] if plugins else [])
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory() as caches:
        if cold:
            env.update(XDG_CACHE_HOME=f"{caches}/xdg", TRITON_CACHE_DIR=f"{caches}/triton")
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        sys.exit(f"build --method {method} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    bundle = max(out.glob(f"{MODEL}-{method}-fp16-*/manifest.json"), key=lambda p: p.stat().st_mtime)
    manifest = json.loads(bundle.read_text())
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    name = method + (" --plugins" if plugins else "") + (" (cold caches)" if cold else "")
    return {"method": name, "wall": wall, "cpu": cpu, "stages": manifest["stages_seconds"]}


def show(result: dict) -> None:
    print(f"{result['method']:<9} wall {result['wall']:6.1f}s  cpu {result['cpu']:6.1f}s (this process's children: the second export process included)")
    for stage, seconds in result["stages"].items():
        print(f"    {seconds:6.1f}s  {stage}")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated (default: all five)")
    parser.add_argument("--rounds", type=int, default=1, help="builds of each method, alternating (default 1)")
    parser.add_argument("--out", type=Path, help="where the bundles go (default: a temporary directory)")
    parser.add_argument("--plugins", action="store_true", help="build with --plugins (plugin graphs and library)")
    parser.add_argument("--cold", action="store_true", help="each build with empty cubin and Triton caches")
    args = parser.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    print(f"{os.cpu_count()} cores (this process may use {len(os.sched_getaffinity(0))}), load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} (1, 5, 15 min)")
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        for _ in range(args.rounds):
            for method in methods:
                show(build(method, out, args.plugins, args.cold))
    print(f"load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
