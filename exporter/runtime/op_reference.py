# SPDX-License-Identifier: Apache-2.0
"""onnxruntime sessions for plugin graphs: the plugin nodes run the token ops' reference maths.

A plugin graph (`model.plugins.onnx`) holds one custom node per token op per block, which no runtime
but TensorRT with the plugin library knows. To verify it on any CPU, each node is handed to
onnxruntime-extensions as a Python custom op that calls the op's CPU implementation, the reference
(`exporter.ops.reference` through `torch.ops.exporter.*`). The graph file is not changed: the session
runs an in-memory copy whose plugin nodes are renamed into onnxruntime-extensions' domain, one
registered op per plugin and token dtype (its Python ops have fixed input types). onnxruntime-extensions
cannot pass float16 to Python, so fp16 tokens cross as float32 (exact Casts around the node) and the
op runs on them in half precision again: what the fp16 reference computes, bit for bit.

Inside `scores()`, the nodes also hand over every token choice's fp32 scores, computed from the tokens
onnxruntime gave them: what a plugin graph's debug twin cannot output, for measuring its own fp16 error
(`checks.margins`).
"""
from __future__ import annotations

import contextlib
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import onnx

from ..errors import ExporterError
from ..ops import reference
from ..ops.contracts import DOMAIN, Contract, all_contracts, by_plugin
from . import ort as ort_runtime

_CONTRIB = "ai.onnx.contrib"  # the domain onnxruntime-extensions runs Python ops in
_TOKEN_TYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16"}


_collected: list[Optional[list]] = [None]  # the list `scores()` fills while open


@contextlib.contextmanager
def scores() -> Iterator[list]:
    """Within: the scores of every choice the plugin nodes make, in the order made ([B, R, C] float32 each)."""
    made: list = []
    before, _collected[0] = _collected[0], made
    try:
        yield made
    finally:
        _collected[0] = before


def has_plugins(model: onnx.ModelProto) -> bool:
    return any(node.domain == DOMAIN for node in model.graph.node)


def session(path: Path | str, threads: Optional[int] = None, options=None):
    """An onnxruntime session on the graph at `path`, its plugin nodes running the reference ops; `options`
    (default `ort.session_options(threads)`) get the onnxruntime-extensions library registered."""
    import onnxruntime_extensions

    names = _register_all()
    model = onnx.load(str(path))
    types = _value_types(model)
    nodes = []
    for node in model.graph.node:
        nodes.append(node)
        if node.domain != DOMAIN:
            continue
        contract = by_plugin(node.op_type)
        if contract is None:
            raise ExporterError(
                f"Plugin node '{node.name}' is a {node.op_type}, which no token op's contract describes.",
                "Export the graph with this version of the exporter (plugins/*/contract.json lists the plugins).",
            )
        token = _TOKEN_TYPES.get(types.get(node.input[0]))
        if token is None:
            raise ExporterError(
                f"Plugin node '{node.name}' ({node.op_type}) has tokens of an unknown or unsupported type.",
                f"Export tokens as {' or '.join(contract.token_dtypes)}.",
            )
        node.domain, node.op_type = _CONTRIB, names[contract.plugin, token]
        for attr in [a for a in node.attribute if a.name.startswith("plugin_")]:
            node.attribute.remove(attr)
        if token == "float16":
            nodes[-1:] = _through_float32(node, contract)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.opset_import.append(onnx.helper.make_opsetid(_CONTRIB, 1))
    options = options or ort_runtime.session_options(threads)
    # the plugin nodes run Python between onnxruntime's kernels: workers spinning for the next kernel would take the
    # cores from it (with `compute`'s one thread: a DeiT-S ToMe plugin graph at batch 8 in 1.3 s instead of 4.0 s)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.register_custom_ops_library(onnxruntime_extensions.get_library_path())
    return ort_runtime.session(model.SerializeToString(), options=options)


def _through_float32(node: onnx.NodeProto, contract: Contract) -> list[onnx.NodeProto]:
    """`node` with its fp16 token inputs and outputs cast to and from float32 around it."""
    before, after = [], []
    for i, spec in enumerate(contract.inputs):
        if spec.dtype == "T":
            wide = f"{node.name}_{spec.name}_fp32"
            before.append(onnx.helper.make_node("Cast", [node.input[i]], [wide], to=onnx.TensorProto.FLOAT))
            node.input[i] = wide
    for i, spec in enumerate(contract.outputs):
        if spec.dtype == "T":
            wide = f"{node.name}_{spec.name}_fp32"
            after.append(onnx.helper.make_node("Cast", [wide], [node.output[i]], to=onnx.TensorProto.FLOAT16))
            node.output[i] = wide
    return [*before, node, *after]


def _value_types(model: onnx.ModelProto) -> dict[str, int]:
    values = [*model.graph.input, *model.graph.value_info, *model.graph.output]
    types = {v.name: v.type.tensor_type.elem_type for v in values}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    return types


@lru_cache(maxsize=None)
def _register_all() -> dict[tuple[str, str], str]:
    """Register every plugin for every token dtype with onnxruntime-extensions, once per process and
    before any session exists: registering a Python op after a session was made crashed the process
    (onnxruntime-extensions 0.15)."""
    return {(c.plugin, t): _register(c, t) for c in all_contracts() for t in c.token_dtypes}


# What each deciding op chooses from, among its arguments (contract order): a plugin node's choice, for its scores.
_CHOICES = {
    "topk_prune": lambda x, score, k, fuse: reference.choose_topk_prune(score, k),
    "evovit_select": lambda x, g, keep: reference.choose_evovit_select(g, keep),
    "tome_merge": lambda x, size, metric, r: reference.choose_tome_merge(metric, r),
    "diffrate_reduce": lambda x, size, score, keep, merge: reference.choose_diffrate_reduce(x, score, keep, merge),
}


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """PyTorch on one thread within: a plugin node's op is one block's tokens, small work that torch's thread pool
    only slows down when it meets onnxruntime's workers on the same cores (200 ms instead of 4 ms for a ToMe merge
    of 8 DeiT-S images on a busy two-core machine)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _register(contract: Contract, token: str) -> str:
    """Register `contract`'s op for tokens of `token` with onnxruntime-extensions."""
    import torch
    from onnxruntime_extensions import PyCustomOpDef, onnx_op

    kinds = {"float32": PyCustomOpDef.dt_float, "int64": PyCustomOpDef.dt_int64}
    ins, outs = contract.dtypes("float32")  # fp16 tokens cross as float32, see _through_float32
    half = token == "float16"
    op = getattr(torch.ops.exporter, contract.op)
    choose = _CHOICES.get(contract.op)
    name = f"{contract.plugin}_{token}"

    def compute(*arrays, **attrs):
        tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
        tensors = [t.half() if half and s.dtype == "T" else t for t, s in zip(tensors, contract.inputs)]
        args = (*tensors, *(int(attrs[a]) for a in contract.attributes))
        made = _collected[0]
        with torch.no_grad(), _one_thread():
            result = op(*args)
            if made is not None and choose is not None:  # the same choice, made again for its scores
                made.extend(scores.float().numpy() for _, scores, _ in choose(*args).decisions())
        result = result if isinstance(result, tuple) else (result,)
        arrays = [t.float().numpy() if t.dtype == torch.float16 else t.numpy() for t in result]
        return tuple(arrays) if len(arrays) > 1 else arrays[0]

    onnx_op(
        op_type=name,
        inputs=[kinds[d] for d in ins],
        outputs=[kinds[d] for d in outs],
        **({"attrs": {a: PyCustomOpDef.dt_int64 for a in contract.attributes}} if contract.attributes else {}),
    )(compute)
    return name
