# SPDX-License-Identifier: Apache-2.0
"""The plugins' contract files (`plugins/<op>/contract.json`): the one description of each token op's
plugin node that the exporter emits, the graph lint checks and the C++ plugin is tested against.

A contract names the TensorRT plugin (name, version, namespace), its integer attributes, and its
inputs and outputs: dtype (`T` is the token dtype, one of `type_constraints["T"]`) and shape, each
dimension a number or an expression over the inputs' named dimensions and the attributes
(e.g. `N-r`, `1+k+fuse`). `B`, the batch, is the only dimension that may be dynamic.
"""
from __future__ import annotations

import ast
import json
import operator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from ..errors import ExporterError

PLUGINS_DIR = Path(__file__).resolve().parents[1] / "plugins"
DOMAIN = "exporter"  # ONNX domain of plugin nodes (TensorRT looks plugins up by op_type, version, namespace)
INDEX_DTYPE = "int64"

Dim = Union[int, str]


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str  # "T", "float32" or "int64"
    shape: tuple[Dim, ...]


@dataclass(frozen=True)
class Contract:
    op: str  # torch op name in the `exporter` library, e.g. "tome_merge"
    plugin: str  # TensorRT plugin name = ONNX op_type, e.g. "ToMeMerge"
    version: str
    namespace: str
    summary: str
    attributes: tuple[str, ...]  # integer attributes, in order
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    token_dtypes: tuple[str, ...]  # what T may be

    def bind(self, shapes: list[tuple[Dim, ...]], attributes: Mapping[str, int]) -> dict[str, Any]:
        """Symbol -> value from the inputs' actual shapes (a symbolic batch, a string or SymInt, stays as
        it is) and the attributes; raises ValueError naming the first dimension that contradicts the contract."""
        env: dict[str, Any] = {a: int(attributes[a]) for a in self.attributes}
        if len(shapes) != len(self.inputs):
            raise ValueError(f"{self.plugin} takes {len(self.inputs)} inputs, got {len(shapes)}")
        for spec, shape in zip(self.inputs, shapes):  # names first, so any input's expressions can use them
            if len(shape) != len(spec.shape):
                raise ValueError(f"input '{spec.name}' has rank {len(shape)}, the contract says {len(spec.shape)}")
            for want, got in zip(spec.shape, shape):
                if isinstance(want, str) and want.isidentifier():
                    env.setdefault(want, got)
        for spec, shape in zip(self.inputs, shapes):
            for want, got in zip(spec.shape, shape):
                if isinstance(got, int) and not (want == "B" or evaluate(want, env) == got):
                    raise ValueError(f"input '{spec.name}' has dimension {got} where the contract says {want} = {evaluate(want, env)}")
        return env

    def output_shapes(self, shapes: list[tuple[Dim, ...]], attributes: Mapping[str, int]) -> list[tuple[Dim, ...]]:
        """Every output's shape for inputs of `shapes`: what the plugin's getOutputShapes must give."""
        env = self.bind(shapes, attributes)
        return [tuple(env["B"] if d == "B" else evaluate(d, env) for d in out.shape) for out in self.outputs]

    def dtypes(self, token: str) -> tuple[list[str], list[str]]:
        """(input dtypes, output dtypes) when T is `token`."""
        if token not in self.token_dtypes:
            raise ValueError(f"{self.plugin} takes tokens of {', '.join(self.token_dtypes)}, not {token}")
        pick = lambda ts: [token if t.dtype == "T" else t.dtype for t in ts]  # noqa: E731
        return pick(self.inputs), pick(self.outputs)


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv}


def evaluate(expr: Dim, env: Mapping[str, Any]) -> int:
    """A contract's dimension expression (+, -, *, // over names and integers) in `env`."""
    if isinstance(expr, int):
        return expr

    def walk(node):
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name):
            return int(env[node.id])
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](walk(node.left), walk(node.right))
        raise ValueError(f"unsupported dimension expression '{expr}'")

    return walk(ast.parse(expr, mode="eval"))


@lru_cache(maxsize=None)
def load(op: str) -> Contract:
    """The contract of token op `op` (e.g. "tome_merge")."""
    path = PLUGINS_DIR / op / "contract.json"
    if not path.is_file():
        raise ExporterError(
            f"No plugin contract for token op '{op}' at {path}.",
            "The package is incomplete (exporter/plugins/ holds the contracts): reinstall it from a wheel or a checkout.",
        )
    raw = json.loads(path.read_text())
    tensors = lambda items: tuple(Tensor(t["name"], t["dtype"], tuple(t["shape"])) for t in items)  # noqa: E731
    return Contract(
        op=raw["op"],
        plugin=raw["plugin"],
        version=str(raw["version"]),
        namespace=raw["namespace"],
        summary=raw["summary"],
        attributes=tuple(a["name"] for a in raw["attributes"]),
        inputs=tensors(raw["inputs"]),
        outputs=tensors(raw["outputs"]),
        token_dtypes=tuple(raw["type_constraints"]["T"]),
    )


def all_contracts() -> list[Contract]:
    return [load(p.parent.name) for p in sorted(PLUGINS_DIR.glob("*/contract.json"))]


def by_plugin(name: str) -> Optional[Contract]:
    """The contract whose plugin (ONNX op_type) is `name`, or None."""
    return next((c for c in all_contracts() if c.plugin == name), None)
