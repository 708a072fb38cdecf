# SPDX-License-Identifier: Apache-2.0
"""How long the plugin library of a `build --plugins` takes, cold and warm (issue 20, item 7).

    python benchmarks/plugin_build_time.py [--model deit_small_patch16_224] [--method tome] [--dtypes fp16]
                                           [--archs 80,86,...] [--all]

Builds `libexporter_plugins.so` (exporter.ops.library.build_library) for what the model needs: the token ops
`exporter.ops.called` counts in it (random weights: the ops do not depend on them) and the graphs' token
dtypes, for the architectures given (default: the library's). Cold: empty caches (XDG_CACHE_HOME, the
project's cubins, and TRITON_CACHE_DIR, Triton's own, both in a fresh temporary folder); warm: the same
build again. `--all` also builds the whole library (every op and dtype) cold, for comparison. Prints the
CPUs this process may use and the load averages before and after each build: on a shared machine
the times say what the other processes left.

A benchmark, not a test: it times, it asserts nothing.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def model_ops(model_name: str, method: str) -> list[str]:
    import torch

    from exporter import ops
    from exporter.methods import apply_method
    from exporter.models import create_model, input_size

    dense = create_model(model_name, "random")
    model = apply_method(dense, method) if method != "none" else dense
    return sorted(ops.called(model, torch.zeros(1, 3, *input_size(dense))))


def timed_build(label: str, root: Path, **kwargs) -> float:
    from exporter.ops import aot, kernel_cache, library

    cubins = kernel_cache.default_dir()
    before = sum(1 for _ in cubins.rglob("*.json")) if cubins.is_dir() else 0
    load = os.getloadavg()
    start = time.perf_counter()
    lib = library.build_library(root / label, **kwargs)
    seconds = time.perf_counter() - start
    compiled = sum(1 for _ in cubins.rglob("*.json")) - before
    print(f"{label:>5}: {seconds:6.1f} s  ({compiled} cubins compiled; {lib.stat().st_size / 1e6:.1f} MB; "
          f"serves {aot.describe(library.served(lib))})  load before {_load(load)}, after {_load(os.getloadavg())}",
          flush=True)
    return seconds


def _load(averages) -> str:
    return "/".join(f"{a:.1f}" for a in averages)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="deit_small_patch16_224")
    parser.add_argument("--method", default="tome")
    parser.add_argument("--dtypes", default="fp16", help="the bundle graphs' token dtypes: fp16, fp32 or fp32,fp16")
    parser.add_argument("--archs", help="compute capabilities x10, e.g. 87,90 (default: the library's)")
    parser.add_argument("--all", action="store_true", help="also build the whole library (every op and dtype) cold")
    args = parser.parse_args(argv)

    from exporter.ops import library

    problem = library.missing_toolchain()
    if problem:
        print(f"cannot build the plugin library here: {problem}", file=sys.stderr)
        return 2
    import triton

    archs = [int(a) for a in args.archs.split(",")] if args.archs else None
    ops = model_ops(args.model, args.method)
    dtypes = args.dtypes.split(",")
    cpus = len(os.sched_getaffinity(0))
    print(f"{args.model} {args.method} {'/'.join(dtypes)}: ops {', '.join(ops)}; archs "
          f"{', '.join(map(str, library.checked_archs(archs)))}; {cpus} CPUs usable ({os.cpu_count()} in the machine), "
          f"load {_load(os.getloadavg())}; Triton {triton.__version__}", flush=True)
    with tempfile.TemporaryDirectory(prefix="plugin-build-time-") as scratch:
        root = Path(scratch)
        os.environ["XDG_CACHE_HOME"] = str(root / "cache")
        os.environ["TRITON_CACHE_DIR"] = str(root / "triton")  # read by the compiler processes, spawned afresh
        timed_build("cold", root, archs=archs, ops=ops, dtypes=dtypes)
        timed_build("warm", root, archs=archs, ops=ops, dtypes=dtypes)
        if args.all:
            os.environ["XDG_CACHE_HOME"] = str(root / "cache-all")
            os.environ["TRITON_CACHE_DIR"] = str(root / "triton-all")
            timed_build("all", root, archs=archs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
