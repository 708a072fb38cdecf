# SPDX-License-Identifier: Apache-2.0
"""Does a latency-targeted DiffRate search meet its budget when the bundle is benched? On the digits fixture:

    python benchmarks/search_latency.py [--target-ms T | --fraction 0.5] [--threads 2] [--images 300] [--epochs 3]
                                        [--rounds 5] [--iterations 20] [--out DIR]

0. without `--target-ms`: the dense bundle is built and benched first, and the target is `--fraction` of its latency
   (the dense model's latency differs from machine to machine and, on a shared one, from minute to minute; 9 ms suits
   a quiet 2-core machine, the target of docs/search.md);
1. `search --target-latency-ms T --runtime onnxruntime --batch 8` on the fixture's training scans (held out: its test
   scans), which measures the model's blocks on this machine, fits the latency and searches a schedule;
2. `build --method diffrate --schedule FILE --batch 8` (fp32), and the dense bundle beside it;
3. `bench` of both at batch 8, onnxruntime CPU with the same threads, interleaved round by round;
4. prints the target, the fitted latency of the searched schedule, the measured one (bench's p50) and its error in
   percent (issue 24 asks for 10%), and the same for the dense model (measured at search time against bench), whose
   difference says how much the machine itself moved between the search's measurement and bench, and the
   calibration of the halves on the whole models (`latency_cost.whole_fit`).

Each step runs in a fresh process, as a user would run it. Absolute latencies are only meaningful on a quiet machine:
the script prints the load average before and after. Bundles and the schedule go to `--out` (default: a temporary
directory, removed at the end).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL = "vit_digits"
BATCH = 8


def run(*args: str) -> None:
    """`python -m <args>` in a fresh process, its output passed through; exits on failure."""
    print("$ python -m " + " ".join(args), flush=True)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", *args], env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode:
        sys.exit(f"failed ({done.returncode}): python -m {' '.join(args)}")
    print(f"  ({time.perf_counter() - start:.0f} s)", flush=True)


def bundle_in(out: Path) -> Path:
    (bundle,) = [p for p in out.iterdir() if (p / "manifest.json").is_file()]
    return bundle


def p50(bench: dict, bundle: Path) -> float:
    """bench's median latency (ms per batch of 8) of onnxruntime CPU fp32 on `bundle`."""
    label = next(b["label"] for b in bench["bundles"] if Path(b["path"]) == bundle)
    return next(r["p50_ms"] for r in bench["rows"]
                if r["bundle"] == label and r["runtime"] == "onnxruntime CPU fp32" and r["batch"] == BATCH)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target-ms", type=float, help="latency budget, ms per batch of 8 (default: --fraction of the dense)")
    parser.add_argument("--fraction", type=float, default=0.5, help="without --target-ms: the budget as a fraction of "
                        "the dense bundle's latency, benched first (default 0.5)")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads, search and bench (default 2)")
    parser.add_argument("--images", type=int, default=300, help="search images (default 300)")
    parser.add_argument("--epochs", type=int, default=3, help="search epochs (default 3)")
    parser.add_argument("--rounds", type=int, default=5, help="bench rounds (default 5)")
    parser.add_argument("--iterations", type=int, default=20, help="bench batches per round (default 20)")
    parser.add_argument("--out", type=Path, help="where the data, schedule and bundles go (default: a temporary directory)")
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    with tempfile.TemporaryDirectory(prefix="search-latency-") as tmp:
        root = args.out or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        data = {split: root / f"digits-{split}" for split in ("train", "test")}
        for split, folder in data.items():
            if not folder.is_dir():
                run("exporter.fixtures.digits", "export-split", str(folder), "--split", split)
        common = ["--model", MODEL, "--weights", "pretrained", "--precision", "fp32", "--batch", str(BATCH)]
        bench = ["--batch", str(BATCH), "--threads", str(args.threads), "--rounds", str(args.rounds),
                 "--iterations", str(args.iterations)]
        run("exporter", "build", *common, "--out", str(root / "dense"))
        dense = bundle_in(root / "dense")
        target = args.target_ms
        if target is None:
            run("exporter", "bench", str(dense), *bench)
            timed = json.loads((dense / "bench" / "bench.json").read_text())
            target = round(args.fraction * p50(timed, dense), 2)
            print(f"target: {args.fraction:g} x the dense bundle's {p50(timed, dense):.2f} ms = {target:g} ms", flush=True)
        schedule = root / f"latency-{target:g}ms.json"
        run("exporter", "search", "--method", "diffrate", "--model", MODEL, "--weights", "pretrained",
            "--data", str(data["train"]), "--eval-data", str(data["test"]), "--images", str(args.images),
            "--epochs", str(args.epochs), "--target-latency-ms", str(target), "--runtime", "onnxruntime",
            "--batch", str(BATCH), "--threads", str(args.threads), "--out", str(schedule))
        run("exporter", "build", *common, "--method", "diffrate", "--schedule", str(schedule), "--out", str(root / "searched"))
        searched = bundle_in(root / "searched")
        run("exporter", "bench", str(dense), str(searched), *bench)
        record = json.loads(schedule.read_text())
        timed = json.loads((searched / "bench" / "bench.json").read_text())
        measured, dense_measured = p50(timed, searched), p50(timed, dense)
        fitted, dense_at_search = record["latency_ms"], record["latency"]["dense_ms"]
        print(f"\nload average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print(f"{MODEL}, onnxruntime CPU fp32, batch {BATCH}, {args.threads} threads")
        print(f"target                 {target:8.2f} ms")
        print(f"fitted (search)        {fitted:8.2f} ms  ({100 * (fitted / target - 1):+.1f}% of the target)")
        print(f"measured (bench p50)   {measured:8.2f} ms  ({100 * (measured / target - 1):+.1f}% of the target)")
        print(f"dense: at search time  {dense_at_search:8.2f} ms, in bench {dense_measured:.2f} ms "
              f"({100 * (dense_measured / dense_at_search - 1):+.1f}%: how much the machine moved)")
        table = record["latency"]
        print(f"calibration: {table['fixed_ms']:.2f} ms + {table['scale']:.3f} x halves + {table['reduction_ms']:.3f} "
              f"ms per reducing block (whole models measured: dense {table['dense_ms']:.2f}, reducing "
              f"{table['reducing_ms']:.2f}, halving {table['halving_ms']:.2f} ms)")
        print(f"schedule: tokens leaving each block {' '.join(map(str, record['tokens_after']))}; "
              f"held-out top-1 {record['held_out']['top1']:.2f}% (dense {record['held_out']['dense_top1']:.2f}%)")


if __name__ == "__main__":
    main()
