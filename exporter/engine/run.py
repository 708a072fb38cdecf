"""Run an engine on the GPU present (TensorRT or TensorRT-RTX, the same Python API), for verify.

Buffers are torch CUDA tensors (torch is a dependency already; no pycuda or cuda-python): set the
input shape, bind every I/O tensor's address, `execute_async_v3` on torch's current stream. Only
call this after `preflight.check` passed: it assumes a GPU, the engine's runtime and version.

Written against TensorRT's documented Python API (10.x/11.x: Runtime.deserialize_cuda_engine,
ICudaEngine.get_tensor_name/get_tensor_mode/get_tensor_dtype, IExecutionContext.set_input_shape,
set_tensor_address, execute_async_v3); it has not run on a GPU in this project yet.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import ExporterError
from . import cache, targets
from .build import _logger


def runner(bundle: Path, folder: str, entry: dict) -> Callable[[np.ndarray], np.ndarray]:
    """A function from a batch of fp32 inputs (numpy) to the engine's first output (numpy fp32)."""
    import torch

    trt = targets.import_runtime(entry["runtime"])
    logger = _logger(trt)
    runtime = trt.Runtime(logger)
    if entry.get("plugin_library"):
        runtime.get_plugin_registry().load_library(str(bundle / cache.PLUGIN_LIBRARY))
    plan = (cache.engines_dir(bundle) / folder / entry["engine"]).read_bytes()
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise ExporterError(f"{targets.LABEL[entry['runtime']]} could not deserialize {entry['engine']}: "
                            f"{'; '.join(logger.errors) or 'no error was logged'}.",
                            f"Rebuild it with `python -m exporter engine {bundle} --runtime {entry['runtime']} --force`.")
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
    dtypes = {"FLOAT": torch.float32, "HALF": torch.float16, "INT32": torch.int32, "INT64": torch.int64, "BF16": torch.bfloat16}

    def dtype(name):
        kind = engine.get_tensor_dtype(name).name
        if kind not in dtypes:
            raise ExporterError(f"{entry['engine']}: tensor '{name}' has type {kind}, which verify cannot feed.",
                                "Rebuild the bundle with fp32 or fp16 inputs and outputs.")
        return dtypes[kind]

    def run(x: np.ndarray) -> np.ndarray:
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
        return outs[outputs[0]].float().cpu().numpy()

    return run
