# SPDX-License-Identifier: Apache-2.0
"""`python -m exporter bench`: throughput measured side by side, never in a timed test.

- `bundles`: `bench BUNDLE...`, every runtime present on built bundles, written into their bench/ folders
  (`results` for the numbers and tables, `plot` for bench.png, `machine` for what it ran on).
- `throughput`: `bench --models`, every method exported here and timed on the CPU, with the machinery's share
  of onnxruntime's time (`profile`).
- `timing`: what both share: each runtime in a process of its own, candidates interleaved round by round.
- `cuda`: CUDA-graph and synchronised calls for PyTorch on a GPU (also used by benchmarks/gpu_torch_bench.py).
"""
