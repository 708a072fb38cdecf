# SPDX-License-Identifier: Apache-2.0
"""Engines: TensorRT / TensorRT-RTX plans built from a bundle's ONNX, cached by content in engines/<target>/.

- `targets`: runtime names, compute-capability targets, the GPU present.
- `cache`: the content key and cache lookups (the engines index itself is `exporter.bundle.engines`).
- `preflight`: the engine's manifest against the runtime and GPU present, refused in one sentence.
- `network`: one TensorRT / TensorRT-RTX build of a graph (parse, configure, build, its facts), with one failure
  type naming the stage that failed, in this process or in a child (`exporter.rtx_child`) for plugin graphs.
- `build`: the `engine` command's build over `network`: planned from the bundle, cached, failures as ExporterErrors.
- `rtx_check`: the TensorRT-RTX parse and engine build on the CPU that `build` and `verify` run on every graph
  (CI's stand-in for TensorRT; the engine is dropped), over `network`, its failures recorded in `RtxCheck`.
- `scripts`: reproduce.sh and build_engine.sh (trtexec for TensorRT 10 and 11), written into every bundle.

Running an engine is `exporter.runtime.tensorrt`; verify's engine stage, `exporter.verify.engines`. Every
TensorRT import is lazy: without it, the commands that need it say so and exit 2.
"""
