# SPDX-License-Identifier: Apache-2.0
"""What a build checks, each check returning a typed result:

- `graph`: onnx.checker, static shapes (only the batch dynamic), TensorRT 10.3 op support, plugin nodes
  against their contracts (`GraphCheck`);
- `parity` / `compare`: every graph's outputs and kept tokens against PyTorch on held-out inputs
  (`Comparison`), which `inputs` makes;
- `margins`: how close a token choice was to fp16 rounding.

The TensorRT-RTX parse and engine build on the CPU is the engine package's (`engine.rtx_check`).
"""
