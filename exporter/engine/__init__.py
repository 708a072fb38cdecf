"""Engines: TensorRT / TensorRT-RTX plans built from a bundle's ONNX, cached by content in engines/<target>/.

- `targets`: runtime names, compute-capability targets, the GPU present.
- `cache`: the content key, the per-target manifest (engines/<target>/engine.json), cache lookups.
- `preflight`: the engine's manifest against the runtime and GPU present, refused in one sentence.
- `build`: the build itself (strongly typed, a batch profile, the timing cache, the plugin library).
- `report`: the report's rows for the bundle's engines, and verify's engine stage (runs them through
  `runtime.engine_runner`).
- `scripts`: reproduce.sh and build_engine.sh (trtexec for TensorRT 10 and 11), written into every bundle.

Every TensorRT import is lazy: without it, the commands that need it say so and exit 2.
"""
