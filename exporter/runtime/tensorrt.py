# SPDX-License-Identifier: Apache-2.0
"""A TensorRT or TensorRT-RTX engine as a runner (`runtime.Runner`): a batch of fp32 images in, every
output as numpy fp32 out. Only open one after `engine.preflight.check` passed.

- TensorRT with Polygraphy installed (the `trt` extra): Polygraphy's `TrtRunner` on the deserialized
  engine. It manages device buffers through the CUDA runtime itself, so it also works where torch has no
  CUDA (a Jetson's PyPI torch is CPU-only).
- Otherwise (TensorRT-RTX, which Polygraphy does not drive, or TensorRT without Polygraphy): buffers
  are torch CUDA tensors; set the input shape, bind every I/O tensor's address, `execute_async_v3` on
  torch's current stream.

Written against TensorRT's and Polygraphy's documented Python APIs (Runtime.deserialize_cuda_engine,
ICudaEngine.get_tensor_name/get_tensor_mode/get_tensor_dtype, IExecutionContext.set_input_shape,
set_tensor_address, execute_async_v3; polygraphy.backend.trt.TrtRunner.infer); neither has run on a
GPU in this project yet.
"""
from __future__ import annotations

import contextlib
import importlib.util
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from ..bundle import engines_dir, read_inside
from ..bundle.trust import library as trusted_library
from ..engine import preflight, targets
from ..engine.network import error_logger
from ..errors import ExporterError
from .runner import Runner


def uses_polygraphy(entry: dict) -> bool:
    return entry["runtime"] == targets.TENSORRT and importlib.util.find_spec("polygraphy") is not None


def cannot_run(entry: dict) -> Optional[ExporterError]:
    """Why verify could not feed this engine here even though pre-flight passed (no buffer provider)."""
    if uses_polygraphy(entry):
        return None
    try:
        import torch  # inside the try: a target's torch may fail to load (then Polygraphy is the way)

        if torch.cuda.is_available():
            return None
    except Exception:
        pass
    extra = "pip install polygraphy (Polygraphy drives TensorRT engines without torch CUDA), or " if entry["runtime"] == targets.TENSORRT else ""
    return ExporterError(f"verify feeds {targets.LABEL[entry['runtime']]} engines through torch CUDA tensors, and this torch "
                         "has no CUDA.", f"Run {extra}install a CUDA build of torch.")


def check_runnable(bundle: Path, folder: str, entry: dict, here: dict[str, preflight.Present]) -> None:
    """Raise the ExporterError that says why engines/`folder`'s `entry` cannot run on this machine: its
    pre-flight (runtime, GPU, plan), then a way to feed it. `here` caches `preflight.present` per runtime."""
    if entry["runtime"] not in here:
        here[entry["runtime"]] = preflight.present(entry["runtime"])
    preflight.check(bundle, folder, entry, here[entry["runtime"]])
    if entry.get("plugin_library"):
        trusted_library(bundle)  # an engine with plugin layers loads the bundle's library: only when trusted
    problem = cannot_run(entry)
    if problem:
        raise problem


@contextlib.contextmanager
def runner(bundle: Path, folder: str, entry: dict) -> Iterator[Runner]:
    """The engine `entry` of `bundle`/engines/`folder` as a runner, its device buffers held while open."""
    trt = targets.import_runtime(entry["runtime"])
    logger = error_logger(trt)
    runtime = trt.Runtime(logger)
    if entry.get("plugin_library"):
        runtime.get_plugin_registry().load_library(str(trusted_library(bundle)))
    plan = read_inside(engines_dir(bundle) / folder / entry["engine"], bundle, "plan")
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise ExporterError(f"{targets.LABEL[entry['runtime']]} could not deserialize {entry['engine']}: "
                            f"{'; '.join(logger.errors) or 'no error was logged'}.",
                            f"Rebuild it with `python -m exporter engine {bundle} --runtime {entry['runtime']} --force`.")
    if uses_polygraphy(entry):
        from polygraphy.backend.trt import TrtRunner  # optional (the trt extra)

        inp, outputs = _io_names(trt, engine)
        dtype = np.float16 if engine.get_tensor_dtype(inp[0]).name == "HALF" else np.float32
        with TrtRunner(engine) as trt_runner:
            def run(x: np.ndarray) -> list[np.ndarray]:
                got = trt_runner.infer({inp[0]: x.astype(dtype)})
                return [np.asarray(got[name], dtype=np.float32) for name in outputs]

            yield run
        return
    yield _torch_runner(trt, engine, entry, logger)


def _io_names(trt, engine) -> tuple[list[str], list[str]]:
    """(inputs, outputs) in the engine's order: the logits are the first output, as in the ONNX graph."""
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    return ([n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT],
            [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT])


def _torch_runner(trt, engine, entry: dict, logger) -> Runner:
    import torch  # as in cannot_run: only where torch has CUDA

    context = engine.create_execution_context()
    inputs, outputs = _io_names(trt, engine)
    dtypes = {"FLOAT": torch.float32, "HALF": torch.float16, "INT32": torch.int32, "INT64": torch.int64, "BF16": torch.bfloat16}

    def dtype(name):
        kind = engine.get_tensor_dtype(name).name
        if kind not in dtypes:
            raise ExporterError(f"{entry['engine']}: tensor '{name}' has type {kind}, which verify cannot feed.",
                                "Rebuild the bundle with fp32 or fp16 inputs and outputs.")
        return dtypes[kind]

    def run(x: np.ndarray) -> list[np.ndarray]:
        stream = torch.cuda.current_stream()
        inp = torch.from_numpy(x).to("cuda").to(dtype(inputs[0])).contiguous()
        context.set_input_shape(inputs[0], tuple(inp.shape))
        context.set_tensor_address(inputs[0], inp.data_ptr())
        outs = {}
        for name in outputs:
            outs[name] = torch.empty(tuple(context.get_tensor_shape(name)), dtype=dtype(name), device="cuda")
            context.set_tensor_address(name, outs[name].data_ptr())
        if not context.execute_async_v3(stream.cuda_stream):
            raise ExporterError(f"{entry['engine']} failed to run: {'; '.join(logger.errors) or 'no error was logged'}.",
                                "Check the GPU with nvidia-smi, then rebuild the engine with --force.")
        stream.synchronize()
        return [outs[name].float().cpu().numpy() for name in outputs]

    return run
