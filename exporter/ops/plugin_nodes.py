# SPDX-License-Identifier: Apache-2.0
"""The `plugin` lowering: each token op becomes one custom ONNX node that TensorRT's ONNX parser turns
into the plugin of the same name.

The node is what TensorRT's parser looks for: op_type = the plugin name, attributes `plugin_version`
and `plugin_namespace`, and the op's integer attributes (token counts, so every shape stays static).
Its domain is `exporter`; the parser looks plugins up by name, version and namespace only. The
exporter builds nodes through ONNX schemas registered from the contracts, which also let
`onnx.checker` check the nodes' inputs, outputs, types and attributes.
"""
from __future__ import annotations

from functools import lru_cache

from onnx import defs

from . import OPS
from .contracts import DOMAIN, Contract
from .contracts import load as load_contract

OPSET = 1  # the `exporter` domain's version in plugin graphs
_ONNX_TYPES = {"float32": "tensor(float)", "float16": "tensor(float16)", "int64": "tensor(int64)"}


def _schema(c: Contract) -> defs.OpSchema:
    param = defs.OpSchema.FormalParameter
    attr = defs.OpSchema.Attribute
    kind = defs.OpSchema.AttrType
    onnx_type = lambda dtype: "T" if dtype == "T" else _ONNX_TYPES[dtype]  # noqa: E731
    return defs.OpSchema(
        c.plugin,
        DOMAIN,
        OPSET,
        doc=c.summary,
        inputs=[param(t.name, onnx_type(t.dtype)) for t in c.inputs],
        outputs=[param(t.name, onnx_type(t.dtype)) for t in c.outputs],
        type_constraints=[("T", [_ONNX_TYPES[d] for d in c.token_dtypes], "token dtype")],
        attributes=[attr(a, kind.INT, a) for a in c.attributes]
        + [attr("plugin_version", kind.STRING, "TensorRT plugin version"),
           attr("plugin_namespace", kind.STRING, "TensorRT plugin namespace")],
    )


@lru_cache(maxsize=None)
def register_schemas() -> None:
    """Register every plugin node's ONNX schema in this process (once)."""
    for name in OPS:
        c = load_contract(name)
        if not defs.has(c.plugin, DOMAIN):
            defs.register_schema(_schema(c))


def _translation(c: Contract):
    """An onnxscript translation of `torch.ops.exporter.<op>`: its tensors, then its attributes."""
    from onnxscript import values

    opset = values.Opset(DOMAIN, OPSET)

    def translate(*args):
        tensors, attrs = args[: len(c.inputs)], args[len(c.inputs):]
        node = getattr(opset, c.plugin)
        return node(
            *tensors,
            **{name: int(value) for name, value in zip(c.attributes, attrs)},
            plugin_version=c.version,
            plugin_namespace=c.namespace,
            _outputs=len(c.outputs),
        )

    translate.__name__ = c.plugin
    return translate


def translation_table() -> dict:
    """`custom_translation_table` for torch.onnx.export: every token op to its plugin node."""
    import torch

    register_schemas()
    return {getattr(torch.ops.exporter, name).default: _translation(load_contract(name)) for name in OPS}
