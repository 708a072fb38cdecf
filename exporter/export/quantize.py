# SPDX-License-Identifier: Apache-2.0
"""The 8-bit graph (int8 or fp8): explicit Q/DQ for TensorRT's strongly typed builder, with token choices in fp32.

onnxruntime's static quantizer writes QuantizeLinear/DequantizeLinear pairs on the inputs of each quantized
MatMul/Gemm, never on its output or bias (QDQ format, what TensorRT 10 and 11 fuse into 8-bit GEMMs): symmetric
activations and weights, weights per output channel, activation scales from the calibration images (int8 MinMax;
fp8 amax / 448, see CALIBRATION_METHOD; fp8 weights amax / 448 too, see `_fp8_weight_scales`). Why not NVIDIA Model Optimizer: docs/quantization.md (measured on the digits fixture).

What stays in fp32 is derived from where a token is chosen, as for the fp16 graph (`fp16.SELECTORS`): every
TopK/ArgMax/ArgMin is a choice, and
- its *score region* is everything its data input is computed from, back to the projections whose weights the
  block's attention and MLP share (a MatMul/Gemm/Conv with a weight): class-attention rows, ToMe's and DiffRate's
  similarities, Evo-ViT's global attention, whatever a method scores with;
- the *token ops' movement* is everything computed from the choices (and scores) alone (one-hot scatter matrices,
  fusion weights, merged sizes), and any MatMul that takes such a tensor (a gather or merge written as a product);
- plugin nodes (another domain than ONNX's) are never quantized, and in a plugin graph a plugin that chooses
  (its contract declares an int64 output: kept indices, merge sources) is a choice like a TopK: its inputs but the
  tokens it moves (contract input 0) are scores, its int64 outputs choices.
Only the remaining MatMul/Gemm nodes, the heavy products of attention and MLP, get 8-bit inputs; onnxruntime's quantizer
rewires only those to a tensor's Q/DQ, so a kept node, a plugin among them, reads the fp32 tensor its contract
declares (tests/test_quantize.py and test_quantize_plugins.py check that no DequantizeLinear feeds one).
"""
from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import ExporterError
from ..ops.contracts import DOMAIN, by_plugin
from .fold import fold_constants
from .fp16 import SELECTORS
from .onnx_export import INPUT_NAME, save

QUANTIZED_OPS = ("MatMul", "Gemm")
WEIGHTED_OPS = ("MatMul", "Gemm", "Conv")  # with a weight: the projections score regions stop at
# int8: onnxruntime's MinMax (scale = amax / 127). fp8: onnxruntime calibrates float8 with Distribution only, whose
# scales (from each tensor's spread) clipped the digits fixture's activations to 74% top-1; its scales are replaced
# with amax / 448 from a MinMax pass over the same images (max calibration, as TensorRT's fp8 recipes do: e4m3's
# precision is relative, so a smaller scale buys no resolution, only saturation)
CALIBRATION_METHOD = {"int8": "MinMax", "fp8": "MinMax (amax / 448)"}
FP8_MAX = 448.0  # largest float8 e4m3fn value


def high_precision_nodes(model: onnx.ModelProto) -> dict[str, list[str]]:
    """The nodes kept out of 8 bits: {"scores": ..., "token_ops": ..., "plugins": ...} (node names, graph order)."""
    graph = model.graph
    constants = {t.name for t in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    producer = {o: n for n in graph.node for o in n.output}
    selectors = [n for n in graph.node if n.op_type in SELECTORS]
    deciders = [(n, c) for n in graph.node if n.domain == DOMAIN and (c := by_plugin(n.op_type)) is not None
                and any(t.dtype == "int64" for t in c.outputs)]

    scores: set[str] = set()
    stack = [n.input[0] for n in selectors] + [i for n, _ in deciders for i in n.input[1:] if i]
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in scores:
            continue
        if node.op_type in WEIGHTED_OPS and any(i in constants for i in node.input):
            continue  # a shared projection: the region's input, computed by the block like every other token
        if node.domain == DOMAIN:
            continue  # an earlier token op's output (tokens, sizes): moved, not scored
        scores.add(node.name)
        stack.extend(node.input)

    # the token ops: what is computed from the choices alone (`chosen`: one-hot scatter matrices, masks, merged
    # sizes), or from the choices and the scores (fusion weights); a region tensor without a choice in it (the keys a
    # score reads) is also the block's own data, and a gather of tokens carries features on, not a choice
    region = {o for n in graph.node if n.name in scores for o in n.output}
    chosen = {o for n in selectors for o in n.output}
    chosen |= {o for n, c in deciders for o, t in zip(n.output, c.outputs) if t.dtype == "int64"}
    decided = region | chosen
    token_ops: set[str] = set()
    for node in graph.node:  # graph order is topological: one pass propagates
        if node.op_type in SELECTORS or node.domain == DOMAIN:
            continue
        inputs = [i for i in node.input if i and i not in constants]
        if inputs and all(i in chosen for i in inputs):
            chosen.update(node.output)
        if inputs and all(i in decided for i in inputs) and any(i in chosen for i in inputs):
            decided.update(node.output)
            token_ops.add(node.name)
        elif node.op_type in QUANTIZED_OPS and any(i in chosen for i in inputs):
            token_ops.add(node.name)  # a gather or merge written as a product with a choice-derived matrix
    token_ops -= scores
    plugins = {n.name for n in graph.node if n.domain not in ("", "ai.onnx")}
    order = [n.name for n in graph.node]
    return {kind: [n for n in order if n in names]
            for kind, names in (("scores", scores | {n.name for n in selectors}), ("token_ops", token_ops), ("plugins", plugins))}


def quantize(src: Path, dst: Path, precision: str, batches: Iterable[np.ndarray],
             open_session: Optional[Callable] = None) -> dict:
    """Write the `precision` (int8|fp8) Q/DQ graph of fp32 graph `src` to `dst` (+ `dst.data`), calibrated on
    `batches` (arrays for the graph's input); returns the calibration record (method, scales, what stayed fp32).
    `open_session` (path -> onnxruntime session): how to run a plugin graph, whose plugin nodes onnxruntime's own
    calibrator cannot run; its ranges are measured with it (`_ranges`) and handed to the quantizer as its cache."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    kind = QuantType.QInt8 if precision == "int8" else QuantType.QFLOAT8E4M3FN

    class Reader(CalibrationDataReader):
        def __init__(self, chunks: Iterator[np.ndarray]):
            self.chunks = iter(chunks)

        def get_next(self):
            chunk = next(self.chunks, None)
            return None if chunk is None else {INPUT_NAME: chunk}

    batches = list(batches)  # read twice for fp8
    with tempfile.TemporaryDirectory(prefix="exporter-quantize-") as tmp:
        folded = Path(tmp) / src.name  # weights as initializers, so every projection's weight gets its Q/DQ
        shutil.copyfile(src, folded)
        shutil.copyfile(src.with_name(src.name + ".data"), folded.with_name(src.name + ".data"))
        fold_constants(folded)
        model = onnx.load(str(folded), load_external_data=False)
        kept = high_precision_nodes(model)
        excluded = {n for names in kept.values() for n in names}
        chosen = [n.name for n in model.graph.node if n.op_type in QUANTIZED_OPS and n.name not in excluded]
        out = Path(tmp) / dst.name
        ranges = None
        if open_session is not None:
            ranges = _ranges(folded, open_session, batches, Path(tmp))
            cache = _range_cache(ranges, Path(tmp), quantize_static, precision)
        with _quiet():
            quantize_static(
                str(folded), str(out), Reader(batches), quant_format=QuantFormat.QDQ,
                activation_type=kind, weight_type=kind, per_channel=True,
                op_types_to_quantize=list(QUANTIZED_OPS), nodes_to_quantize=chosen,
                calibrate_method=CalibrationMethod.MinMax if precision == "int8" else CalibrationMethod.Distribution,
                use_external_data_format=True, **({"calibration_cache_path": cache} if ranges else {}),
                extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                               **({"TensorQuantOverrides": _fp8_weight_scales(model, chosen, folded.parent)} if precision == "fp8" else {}),
                               "QuantizeBias": False,  # TensorRT dequantizes 8-bit types only, not int32 biases
                               # inputs only: a GEMM's output stays fp32 (onnxruntime's default also rounds it to
                               # 8 bits, which fed 8-bit keys into the score region)
                               "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OPS),
                               # one Q/DQ pair per tensor, shared by its consumers: the pattern TensorRT fuses
                               "DedicatedQDQPair": False,
                               # MatMul weights are [in, out]: a scale per output channel is axis 1
                               "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1}},
            )
        quantized = onnx.load(str(out))
        if precision == "fp8":
            with _quiet():
                amax = ({k: max(abs(lo), abs(hi)) for k, (lo, hi) in ranges.items()} if ranges
                        else _amax(folded, Reader(batches), Path(tmp)))
                _max_scales(quantized, amax)
        dst.parent.mkdir(parents=True, exist_ok=True)
        save(quantized, dst)
    return {
        "quantizer": "onnxruntime.quantization.quantize_static (QDQ)",
        "precision": precision,
        "calibration_method": CALIBRATION_METHOD[precision],
        "symmetric": True,
        "weights": "per output channel" if precision == "int8" else "per output channel, amax / 448",
        "quantized_nodes": chosen,
        "high_precision": kept,
        "activation_scales": activation_scales(onnx.load(str(dst), load_external_data=False)),
    }


def _fp8_weight_scales(model: onnx.ModelProto, chosen: list[str], folder: Path) -> dict[str, list[dict]]:
    """The weight of every product in `chosen` scaled per output channel to amax / FP8_MAX, as onnxruntime
    quantizer overrides (`TensorQuantOverrides`; `folder` holds the weights' data). onnxruntime's own float8 weight
    scale is the tensor's std / 100 (the spread of the e4m3 values), which saturates every weight beyond about 4.5
    standard deviations of its tensor at +-448 x scale: max scaling keeps them, as TensorRT's fp8 recipes do."""
    weights = {t.name: t for t in model.graph.initializer}
    zero = np.array(0, dtype=onnx.helper.tensor_dtype_to_np_dtype(onnx.TensorProto.FLOAT8E4M3FN))
    overrides = {}
    for node in model.graph.node:
        if node.name not in chosen:
            continue
        for i, name in enumerate(node.input):
            if name not in weights or name in overrides:
                continue
            w = numpy_helper.to_array(weights[name], base_dir=str(folder)).astype(np.float32)
            transposed = node.op_type == "Gemm" and i == 1 and any(a.name == "transB" and a.i for a in node.attribute)
            axis = 0 if transposed else w.ndim - 1  # the output channel: weights are [in, out], [out, in] under transB
            amax = np.abs(np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)).max(axis=1)
            overrides[name] = [{"axis": axis, "scale": np.float32(max(a, 1e-12) / FP8_MAX), "zero_point": zero}
                               for a in amax]
    return overrides


def _ranges(model: Path, open_session: Callable, batches: list[np.ndarray], tmp: Path) -> dict[str, tuple[float, float]]:
    """(lowest, highest) of every MatMul/Gemm activation input and output on `batches` (onnxruntime's MinMax), the
    graph run by `open_session` with those tensors as extra outputs."""
    graph = onnx.load(str(model))
    constants = {t.name for t in graph.graph.initializer}
    names = list(dict.fromkeys(t for n in graph.graph.node if n.op_type in QUANTIZED_OPS
                               for t in (*n.input, *n.output) if t and t not in constants))
    outputs = {o.name for o in graph.graph.output}
    graph.graph.output.extend(onnx.ValueInfoProto(name=t) for t in names if t not in outputs)
    augmented = tmp / "ranges.onnx"
    save(graph, augmented)
    session = open_session(augmented)
    order = [o.name for o in session.get_outputs()]
    low: dict[str, float] = {}
    high: dict[str, float] = {}
    for chunk in batches:
        for name, value in zip(order, session.run(None, {INPUT_NAME: chunk})):
            if name in names:
                low[name] = min(low.get(name, np.inf), float(value.min()))
                high[name] = max(high.get(name, -np.inf), float(value.max()))
    return {name: (low[name], high[name]) for name in names}


def _range_cache(ranges: dict[str, tuple[float, float]], tmp: Path, quantize_static, precision: str) -> Path:
    """`ranges` as onnxruntime's calibration cache (`quantize_static(calibration_cache_path=...)`), for the method
    `quantize` calibrates `precision` with (fp8's Distribution scales are replaced by amax / 448 anyway)."""
    import inspect

    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData, save_tensors_data

    if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
        raise ExporterError("This onnxruntime cannot quantize a plugin graph: its quantize_static takes no "
                            "calibration_cache_path (the plugin nodes' ranges are measured outside it).",
                            "Upgrade onnxruntime (pip install -U onnxruntime), or build without --plugins.")
    method = CalibrationMethod.MinMax if precision == "int8" else CalibrationMethod.Distribution
    # Distribution (fp8) reads a spread: amax stands in, as `_max_scales` then sets every activation's scale from amax
    spread = {} if method == CalibrationMethod.MinMax else {"avg": np.float32(0)}
    data = {k: TensorData(lowest=np.float32(lo), highest=np.float32(hi), **spread,
                          **({"std": np.float32(max(abs(lo), abs(hi)))} if spread else {}))
            for k, (lo, hi) in ranges.items()}
    cache = tmp / "ranges.json"
    save_tensors_data(TensorsData(method, data), cache)
    return cache


def _amax(model: Path, reader, tmp: Path) -> dict[str, float]:
    """Largest magnitude of every MatMul/Gemm input and output on the calibration images (onnxruntime's MinMax)."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    calibrator = create_calibrator(model, ["MatMul", "Gemm"], augmented_model_path=str(tmp / "augmented.onnx"),
                                   calibrate_method=CalibrationMethod.MinMax, use_external_data_format=True,
                                   extra_options={"symmetric": True})
    calibrator.collect_data(reader)
    return {name: float(np.max(np.abs(np.asarray(data.range_value, dtype=np.float64))))
            for name, data in calibrator.compute_data().items()}


def _max_scales(model: onnx.ModelProto, amax: dict[str, float]) -> None:
    """Set every activation's fp8 scale (shared by its QuantizeLinear and DequantizeLinear) to amax / FP8_MAX."""
    constants = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in constants and node.input[0] in amax:
            scale = constants[node.input[1]]
            value = np.array(max(amax[node.input[0]], 1e-12) / FP8_MAX, dtype=np.float32).reshape(np.shape(numpy_helper.to_array(scale)))
            scale.CopyFrom(numpy_helper.from_array(value, scale.name))


@contextlib.contextmanager
def _quiet():
    """Hide what onnxruntime's quantizer prints (histogram settings, its advice to pre-process, via the root logger)
    and onnx-graphsurgeon's float8 notices; the build's progress display replaces them."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def activation_scales(model: onnx.ModelProto) -> dict[str, float]:
    """The calibrated scale of every quantized activation (the amax/scale cache: amax = scale x 127 for int8,
    x 448 for fp8 e4m3): QuantizeLinear input -> scale."""
    constants = {t.name: t for t in model.graph.initializer}
    weights = set(constants)
    scales = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in weights and node.input[1] in constants:
            scales[node.input[0]] = float(numpy_helper.to_array(constants[node.input[1]]).reshape(-1)[0])
    return scales
