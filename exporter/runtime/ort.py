# SPDX-License-Identifier: Apache-2.0
"""onnxruntime sessions with explicit, reproducible thread settings (benchmarks compare like with like)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np


def session_options(threads: Optional[int] = None, spinning: bool = True):
    """Quiet options with explicit threads (intra-op `threads`, one inter-op), all graph optimisations on. Without
    `spinning`, idle workers sleep instead of spinning for the next kernel: what a check wants while other processes
    (the build's second export, TensorRT-RTX checks) need the cores; a benchmark keeps onnxruntime's default."""
    import onnxruntime as ort  # seconds to load: only when a graph runs

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def session(model: Path | str | bytes, threads: Optional[int] = None, providers: Optional[list[str]] = None, options=None):
    """A session on a model file (or serialized model) from `session_options(threads)` unless `options` are given."""
    import onnxruntime as ort  # seconds to load: only when a graph runs

    options = options or session_options(threads)
    model = model if isinstance(model, bytes) else str(model)
    if _float8(model):
        # onnxruntime's CPU fusions rewrite DequantizeLinear -> MatMul into QLinearMatMul, which has no float8
        # kernel; unfused, float8 Q/DQ run as written: values rounded to fp8, products in fp32 (what TensorRT's
        # fp8 GEMMs compute, up to their accumulation order)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model, options, providers=providers or ["CPUExecutionProvider"])


def run(sess, x: np.ndarray) -> list[np.ndarray]:
    """All outputs for input `x` (cast to the graph's input dtype, so --io-fp16 graphs take fp32 arrays)."""
    return sess.run(None, feed(sess, x))


def feed(sess, x: np.ndarray) -> dict[str, np.ndarray]:
    """The session's input for `x`, cast to the graph's input dtype (a benchmark casts once, outside the timing)."""
    inp = sess.get_inputs()[0]
    dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
    return {inp.name: x.astype(dtype, copy=False)}


def _float8(model: str | bytes) -> bool:
    """Whether the graph (at a path, or serialized: a plugin graph's copy for `op_reference`) quantizes to float8
    (its Q/DQ zero points are float8 constants)."""
    import onnx

    model = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(model, load_external_data=False)
    return any(t.data_type == onnx.TensorProto.FLOAT8E4M3FN for t in model.graph.initializer)
