# SPDX-License-Identifier: Apache-2.0
"""Graph checks every build runs before a bundle is written (`check_graph`).

Two questions, each answered as a list of readable problems (empty = clean):

* `check_static`: is every tensor's shape fixed except for the batch? Token-reduction graphs must keep
  static token counts; a shape that depends on tensor values (NonZero, boolean masks, a Reshape fed by
  data) cannot get a TensorRT optimization profile and breaks fixed-size plugins downstream.
* `check_tensorrt`: will TensorRT 10.3's ONNX parser (JetPack 6, the oldest target) import every node?

Shape inference uses onnxruntime's `SymbolicShapeInference` on a weight-free copy of the graph. Plain
`onnx.shape_inference` (even with data propagation) loses the batch symbol at every `Reshape` whose
target shape contains -1, which the dynamo exporter emits for each attention block; the sympy-based
engine carries `batch` through.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import onnx
from onnx import external_data_helper, inliner, numpy_helper

from ..errors import ExporterError
from ..ops.contracts import by_plugin
from ..ops.plugin_nodes import register_schemas

ModelLike = Union[onnx.ModelProto, str, Path]

_STANDARD_DOMAINS = ("", "ai.onnx")
# Domains whose ops have no TensorRT importer and are never TensorRT plugins.
_FOREIGN_DOMAINS = ("ai.onnx.ml", "ai.onnx.preview.training", "com.microsoft")

# Ops with a TensorRT importer in TensorRT 10.3 (the "Y" rows, ai.onnx domain).
# Source: onnx/onnx-tensorrt docs/operators.md, branch 10.1-GA, commit 96e781103cfc4adf4a6bb557e94bac8e693f6f4c
# ("TensorRT 10.0 supports operators in the inclusive range of opset 9 to opset 20"). No 10.2/10.3 snapshot is
# stored; the project's docs/Changelog.md lists no new operators for 10.2 (error handling, GRU/Squeeze tweaks)
# or 10.3 (tensor `axes` for Slice, a new ScatterElements plugin); 10.4 is the next release to add any.
TRT_10_3_OPS = frozenset({
    "Abs", "Acos", "Acosh", "Add", "And", "ArgMax", "ArgMin", "Asin", "Asinh", "Atan", "Atanh", "AveragePool",
    "BatchNormalization", "Cast", "CastLike", "Ceil", "Celu", "Clip", "Concat", "Constant", "ConstantOfShape",
    "Conv", "ConvTranspose", "Cos", "Cosh", "CumSum", "DepthToSpace", "DequantizeLinear", "Div",
    "Dropout", "Einsum", "Elu", "Equal", "Erf", "Exp", "Expand", "EyeLike", "Flatten", "Floor", "GRU", "Gather",
    "GatherElements", "GatherND", "Gelu", "Gemm", "GlobalAveragePool", "GlobalLpPool", "GlobalMaxPool", "Greater",
    "GreaterOrEqual", "GridSample", "GroupNormalization", "HardSigmoid", "HardSwish", "Hardmax", "Identity", "If",
    "ImageScaler", "InstanceNormalization", "IsInf", "IsNaN", "LRN", "LSTM", "LayerNormalization", "LeakyRelu",
    "Less", "LessOrEqual", "Log", "LogSoftmax", "Loop", "LpNormalization", "LpPool", "MatMul", "Max", "MaxPool",
    "Mean", "MeanVarianceNormalization", "Min", "Mish", "Mod", "Mul", "Neg", "NonMaxSuppression", "NonZero", "Not",
    "OneHot", "Or", "PRelu", "Pad", "ParametricSoftplus", "Pow", "QuantizeLinear", "RNN", "RandomNormal",
    "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Range", "Reciprocal", "ReduceL1", "ReduceL2",
    "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum",
    "ReduceSumSquare", "Relu", "Reshape", "Resize", "ReverseSequence", "RoiAlign", "Round", "ScaledTanh", "Scan",
    "Scatter", "ScatterElements", "ScatterND", "Selu", "Shape", "Shrink", "Sigmoid", "Sign", "Sin", "Sinh", "Size",
    "Slice", "Softmax", "Softplus", "Softsign", "SpaceToDepth", "Split", "Sqrt", "Squeeze", "Sub", "Sum", "Tan",
    "Tanh", "ThresholdedRelu", "Tile", "TopK", "Transpose", "Trilu", "Unsqueeze", "Upsample", "Where", "Xor",
})
# NOTE: not DeformConv, though the table marks it "Y": the parser maps it to the ModulatedDeformConv2d plugin,
# which needs TensorRT's plugin library (TensorRT-RTX has none), so a graph with it does not parse on its own.
TRT_10_3_OPSETS = (9, 20)

# Ops whose output shape depends on tensor values (TensorRT calls them data-dependent-shape layers).
DATA_DEPENDENT_OPS = frozenset({"NonZero", "NonMaxSuppression", "Unique", "Compress"})

TOPK_MAX_K = 3840  # operators.md: "`K` input must be less than 3840".

# Inputs that operators.md says must be build-time constants in 10.3: (op, input index, input name).
# Slice axes are not here: 10.3 added tensor `axes` for Slice (Changelog). TopK's K is checked separately.
_CONSTANT_INPUTS = {
    "CumSum": ((1, "axis"),),
    "OneHot": ((1, "depth"),),
    "Pad": ((3, "axes"),),
    "Squeeze": ((1, "axes"),),
    "Unsqueeze": ((1, "axes"),),
    "Dropout": ((2, "training_mode"),),
    **{op: ((1, "axes"),) for op in (
        "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
        "ReduceProd", "ReduceSum", "ReduceSumSquare")},
}
# The importer returns a single output; a node listing more (even unused) fails "Node has more output tensors
# than TRT expected" (onnx-tensorrt 10.1 ModelImporter.cpp).
_SINGLE_OUTPUT_OPS = ("LayerNormalization", "MaxPool")
_RESIZE_ALLOWED = {
    "mode": ("nearest", "linear"),
    "coordinate_transformation_mode": (
        "half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"),
    "nearest_mode": ("floor", "ceil", "round_prefer_floor", "round_prefer_ceil"),
    "keep_aspect_ratio_policy": ("stretch",),
}
_RESIZE_DEFAULTS = {
    "mode": "nearest", "coordinate_transformation_mode": "half_pixel", "nearest_mode": "round_prefer_floor",
    "keep_aspect_ratio_policy": "stretch",
}

# Initializers up to this many elements keep their values in the shape-inference copy (shape tensors,
# axes, scales); larger ones are weights and only their shape matters.
_VALUE_LIMIT = 1024
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SYMPY_FUNCTIONS = frozenset({"Min", "Max", "Mod", "floor", "ceiling", "Abs"})


@dataclass
class GraphCheck:
    """The outcome of `check_graph`: one readable line per problem; the graph passed when there are none."""

    graph: str
    problems: list[str]

    @property
    def passed(self) -> bool:
        return not self.problems


def check_graph(path: Path | str) -> GraphCheck:
    """onnx.checker (full check, weights included; plugin nodes against the schemas their contracts
    give) plus `lint`: everything a build checks on a graph before running it."""
    register_schemas()
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as e:
        return GraphCheck(str(path), [f"onnx.checker: {str(e).splitlines()[0]}"])
    return GraphCheck(str(path), lint(path))


def lint(model: ModelLike, batch_dim: str = "batch") -> list[str]:
    """All problems of `check_static` and `check_tensorrt`."""
    model, base_dir = _load(model)
    return _check_static(model, base_dir, batch_dim) + check_tensorrt(model)


# ---------------------------------------------------------------------------------------------------------------
# static shapes


def check_static(model: ModelLike, batch_dim: str = "batch") -> list[str]:
    """One problem per tensor whose shape is not fixed apart from `batch_dim`.

    A problem is reported where it starts (the node that introduces an unknown or non-batch dimension); the
    tensors downstream that inherit it are counted in the same message rather than listed. Weights are never
    read: pass a path, or a ModelProto with or without its external data loaded. Custom-domain (plugin) nodes
    have no shape function here, so their output shapes must be declared in the graph's value_info.
    """
    model, base_dir = _load(model)
    return _check_static(model, base_dir, batch_dim)


def _check_static(model: onnx.ModelProto, base_dir: Optional[Path], batch_dim: str) -> list[str]:
    skeleton = _weightless_copy(model, base_dir)
    shapes, error = _infer_shapes(skeleton)
    roots: dict[str, list] = {}  # tensor where a problem starts -> [message, number of tensors inheriting it]
    inherited: dict[str, set[str]] = {}  # problem tensor -> the roots it inherits from
    bad_symbols: dict[str, set[str]] = {}  # problem tensor -> its symbols other than batch_dim
    for value in skeleton.graph.input:
        dims = _dims(value)
        if _shape_problem(dims, batch_dim):
            roots[value.name] = [f"graph input '{value.name}' has shape {_render(dims)}: only '{batch_dim}' "
                                 f"may be dynamic", 0]
            inherited[value.name] = {value.name}
            bad_symbols[value.name] = _foreign_symbols(dims, batch_dim)
    for node in skeleton.graph.node:
        in_roots = set().union(*(inherited.get(i, ()) for i in node.input))
        in_symbols = set().union(*(bad_symbols.get(i, ()) for i in node.input))
        for out in filter(None, node.output):
            dims = _dims(shapes.get(out))
            issue = _shape_problem(dims, batch_dim)
            if issue is None:
                continue
            bad_symbols[out] = _foreign_symbols(dims, batch_dim)
            if (bad_symbols[out] - in_symbols) or not in_roots:
                roots[out] = [_describe(out, node, dims, issue, batch_dim), 0]
                inherited[out] = {out}
            else:
                inherited[out] = in_roots
                for root in in_roots:
                    roots[root][1] += 1
    problems = [message + (f"; {count} tensor(s) downstream inherit it" if count else "")
                for message, count in roots.values()]
    if error is not None:
        problems.append(f"shape inference stopped with an error ({error}); the shapes after that point are unknown")
    return problems


def _shape_problem(dims: Optional[list], batch_dim: str) -> Optional[str]:
    """None when the shape is static apart from `batch_dim` (expressions such as '3*batch' included)."""
    if dims is None:
        return "unknown rank"
    if any(d is None for d in dims):
        return "unknown dims"
    if _foreign_symbols(dims, batch_dim):
        return "symbolic dims"
    return None


def _foreign_symbols(dims: Optional[list], batch_dim: str) -> set[str]:
    """Symbols in the dims other than `batch_dim` (dims may be expressions such as '3*batch')."""
    found = set()
    for d in dims or ():
        if isinstance(d, str):
            found.update(s for s in _IDENTIFIER.findall(d) if s != batch_dim and s not in _SYMPY_FUNCTIONS)
    return found


def _describe(tensor: str, node: onnx.NodeProto, dims: Optional[list], issue: str, batch_dim: str) -> str:
    where = f"tensor '{tensor}' from {node.op_type} node '{node.name}'"
    if node.domain not in _STANDARD_DOMAINS and issue == "unknown rank":
        return (f"{where} (domain '{node.domain}') has no known shape: declare the plugin's output shapes in "
                f"the graph's value_info")
    if issue == "unknown rank":
        return f"{where}: shape could not be inferred (unknown rank)"
    bad = [i for i, d in enumerate(dims) if d is None or (isinstance(d, str) and _foreign_symbols([d], batch_dim))]
    which = f"dim {bad[0]} is" if len(bad) == 1 else f"dims {', '.join(str(i) for i in bad)} are"
    return (f"{where} has shape {_render(dims)}: {which} neither fixed nor '{batch_dim}' "
            f"(a data-dependent or uninferable size)")


def _render(dims: Optional[list]) -> str:
    if dims is None:
        return "<unknown rank>"
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def _dims(value: Optional[onnx.ValueInfoProto]) -> Optional[list]:
    """[int | str | None] per dim, or None for an unknown rank."""
    if value is None or not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
        return None
    out = []
    for d in value.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            out.append(d.dim_value)
        elif d.HasField("dim_param") and d.dim_param:
            out.append(d.dim_param)
        else:
            out.append(None)
    return out


def _weightless_copy(model: onnx.ModelProto, base_dir: Optional[Path]) -> onnx.ModelProto:
    """The graph with large initializers turned into typed graph inputs: shape inference never touches weights.

    Small initializers keep their values (they carry shapes, axes and scales); when their data is external and
    not loaded it is read from `base_dir`, or the tensor becomes an input of unknown value if there is none.
    """
    src = model.graph
    graph = onnx.GraphProto(name=src.name)
    graph.node.extend(src.node)
    graph.input.extend(src.input)
    graph.output.extend(src.output)
    declared = {v.name for v in src.input}
    # value_info is kept only for custom-domain outputs: those shapes can only come from the graph itself.
    plugin_outputs = {o for n in src.node if n.domain not in _STANDARD_DOMAINS for o in n.output}
    graph.value_info.extend(v for v in src.value_info if v.name in plugin_outputs)
    for init in src.initializer:
        if init.name in declared:
            continue
        small = int(np.prod(init.dims, dtype=np.int64)) <= _VALUE_LIMIT
        external = init.data_location == onnx.TensorProto.EXTERNAL
        if small and external and base_dir is not None:
            loaded = onnx.TensorProto()
            loaded.CopyFrom(init)
            external_data_helper.load_external_data_for_tensor(loaded, str(base_dir))
            loaded.data_location = onnx.TensorProto.DEFAULT
            del loaded.external_data[:]
            graph.initializer.append(loaded)
        elif small and not external:
            graph.initializer.append(init)
        else:
            graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    out = onnx.helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
    out.functions.extend(model.functions)
    if out.functions:
        out = inliner.inline_local_functions(out)
    return out


_AXES_INPUT_REDUCTIONS = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMin", "ReduceSumSquare")


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in _STANDARD_DOMAINS), 0)


def _infer_shapes(model: onnx.ModelProto) -> tuple[dict[str, onnx.ValueInfoProto], Optional[str]]:
    """Run SymbolicShapeInference and return every inferred value_info, plus an error text if it crashed.

    The class is driven directly rather than through `infer_shapes()`, which raises on the first node it
    cannot infer and writes `sym_shape_infer_temp.onnx` into the working directory when it does.
    """
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference  # onnxruntime: seconds to load

    engine = SymbolicShapeInference(int_max=2**31 - 1, auto_merge=False, guess_output_rank=False, verbose=0)
    declared = {v.name: v for v in [*model.graph.value_info, *model.graph.output]}
    if _opset(model) >= 18:
        # From opset 18 every Reduce* takes its axes as an input, like ReduceSum; the engine only knows
        # that form for ReduceSum/Mean/Prod and crashes on ReduceL2 (ToMe's key normalisation).
        for op in _AXES_INPUT_REDUCTIONS:
            engine.dispatcher_.setdefault(op, engine._infer_ReduceSum)
    for node in model.graph.node:
        if node.domain not in _STANDARD_DOMAINS and node.op_type not in engine.dispatcher_:
            engine.dispatcher_[node.op_type] = _plugin_shapes(engine, declared)
    error = None
    try:
        engine._preprocess(model)
        while engine.run_:
            engine._infer_impl()
    except Exception as exc:  # noqa: BLE001 - an engine crash is reported as a lint problem, not a traceback
        error = f"{type(exc).__name__}: {exc}"
    return dict(engine.known_vi_), error


def _plugin_shapes(engine, declared: dict[str, onnx.ValueInfoProto]):
    """Shape function for plugin nodes: the output shapes and dtypes their contract gives for the inputs'
    shapes (what the TensorRT plugin computes), or, for a plugin without a contract, the graph's declared
    ones. A contract's shape that contradicts the graph's declaration raises, and shape inference reports it."""
    def infer(node: onnx.NodeProto) -> None:
        contract = by_plugin(node.op_type)
        if contract is None or len(node.input) != len(contract.inputs):
            for out in node.output:
                if out in declared:
                    engine.known_vi_[out].CopyFrom(declared[out])
            return
        inputs = [engine.known_vi_[i] for i in node.input]
        token = inputs[0].type.tensor_type.elem_type
        shapes = contract.output_shapes([tuple(_dims(v)) for v in inputs], attributes(node))
        for out, spec, shape in zip(node.output, contract.outputs, shapes):
            dtype = token if spec.dtype == "T" else onnx.helper.np_dtype_to_tensor_dtype(np.dtype(spec.dtype))
            value = onnx.helper.make_tensor_value_info(out, dtype, list(shape))
            if out in declared and (_dims(declared[out]), declared[out].type.tensor_type.elem_type) != (list(shape), dtype):
                raise ValueError(f"{node.op_type} node '{node.name}': output '{out}' is declared "
                                 f"{_render(_dims(declared[out]))}, its contract gives {_render(list(shape))}")
            engine.known_vi_[out].CopyFrom(value)

    return infer


# ---------------------------------------------------------------------------------------------------------------
# TensorRT parser compatibility


def check_tensorrt(model: ModelLike) -> list[str]:
    """Problems that make TensorRT 10.3's ONNX parser reject the graph, or that we refuse to ship.

    The op table and restrictions are TensorRT 10.3's (JetPack 6); newer releases only add ops and relax
    restrictions, so for them the check is conservative. Custom-domain nodes are plugins, checked against their
    contracts.
    Subgraphs (If/Loop/Scan) and local functions are checked too.
    """
    model, _ = _load(model)
    problems = []
    opset = next((o.version for o in model.opset_import if o.domain in _STANDARD_DOMAINS), None)
    lo, hi = TRT_10_3_OPSETS
    if opset is not None and not lo <= opset <= hi:
        problems.append(f"the graph uses ai.onnx opset {opset}; TensorRT 10.3 parses opsets {lo} to {hi} "
                        f"(export with opset={hi} or lower)")
    functions = {(f.domain, f.name): f for f in model.functions}
    for node, constants, where in _walk(model.graph.node, _constants(model.graph), functions, ""):
        problems.extend(f"{where}{p}" for p in _node_problems(node, constants))
    return problems


def attributes(node: onnx.NodeProto) -> dict:
    """Attribute values, strings decoded."""
    values = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in values.items()}


def _walk(nodes, constants: dict, functions: dict, where: str):
    """Yield (node, constants in scope, location prefix) through subgraphs and local-function bodies."""
    for node in nodes:
        key = (node.domain, node.op_type)
        if key in functions:
            body = functions[key].node
            yield from _walk(body, _constants_of(body), functions, f"{where}in function '{node.op_type}': ")
            continue
        yield node, constants, where
        for attr in node.attribute:
            subgraphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subgraphs:
                scope = {**constants, **_constants(sub)}
                yield from _walk(sub.node, scope, functions, f"{where}in {node.op_type} '{node.name}'.{attr.name}: ")


def _constants(graph: onnx.GraphProto) -> dict:
    """Build-time constants: initializer name -> TensorProto, Constant output -> its attribute."""
    consts = {i.name: i for i in graph.initializer}
    consts.update(_constants_of(graph.node))
    return consts


def _constants_of(nodes) -> dict:
    return {n.output[0]: n.attribute[0] for n in nodes if n.op_type == "Constant" and n.attribute and n.output}


def _constant_value(source) -> Optional[np.ndarray]:
    """The value of an initializer or Constant attribute, or None when it lives in unloaded external data."""
    if isinstance(source, onnx.AttributeProto):
        if source.type == onnx.AttributeProto.TENSOR:
            source = source.t
        else:
            return np.asarray(onnx.helper.get_attribute_value(source))
    if source.data_location == onnx.TensorProto.EXTERNAL and not source.raw_data:
        return None
    return numpy_helper.to_array(source)


def _node_problems(node: onnx.NodeProto, constants: dict) -> list[str]:
    op = node.op_type
    name = f"{op} node '{node.name}'"
    if node.domain in _FOREIGN_DOMAINS:
        return [f"{name} (domain '{node.domain}') has no TensorRT importer and is not a TensorRT plugin"]
    if node.domain not in _STANDARD_DOMAINS:
        return _plugin_problems(node)  # resolved through TensorRT's plugin registry at build time
    attrs = attributes(node)
    if op in DATA_DEPENDENT_OPS:
        extra = "" if op in TRT_10_3_OPS else " (and TensorRT 10.3 has no importer for it)"
        return [f"{name}: its output shape depends on tensor values{extra}; keep token counts static "
                f"(select a fixed number of tokens with topk)"]
    if op not in TRT_10_3_OPS:
        return [f"{name}: {op} is not supported by TensorRT 10.3's ONNX parser"]
    problems = []
    if op == "TopK":
        problems += _topk_problems(name, node, attrs, constants)
    for index, input_name in _CONSTANT_INPUTS.get(op, ()):
        if len(node.input) > index and node.input[index] and node.input[index] not in constants:
            problems.append(f"{name}: input '{input_name}' ('{node.input[index]}') must be a constant "
                            f"(initializer or Constant) for TensorRT 10.3")
    if op == "Dropout" and len(node.input) > 2 and node.input[2] in constants:
        value = _constant_value(constants[node.input[2]])
        if value is not None and bool(np.any(value)):
            problems.append(f"{name}: training_mode must be false")
    if op == "ScatterElements" and attrs.get("reduction", "none") != "none":
        problems.append(f"{name}: reduction='{attrs['reduction']}' is not supported (TensorRT <= 9 ignores it and "
                        f"10.x needs a plugin); use scatter_add_tokens (an exact Equal+MatMul) instead")
    if op == "ScatterND" and "reduction" in attrs:
        if attrs["reduction"] == "none":
            problems.append(f"{name}: TensorRT 10.x rejects any 'reduction' attribute on ScatterND, even 'none' "
                            f"(still in 10.7: microsoft/onnxruntime#23618; lifted by onnx/onnx-tensorrt#1013); "
                            f"drop the attribute, 'none' is the default")
        else:
            problems.append(f"{name}: reduction='{attrs['reduction']}' is not supported by TensorRT")
    if op == "Transpose" and any(p < 0 for p in attrs.get("perm", ())):
        problems.append(f"{name}: perm {list(attrs['perm'])} has negative entries; use non-negative dims")
    if op in _SINGLE_OUTPUT_OPS and len(node.output) > 1:
        problems.append(f"{name}: only the first output is supported, the node lists {len(node.output)}")
    if op == "Resize":
        problems += _resize_problems(name, attrs)
    return problems


def _plugin_problems(node: onnx.NodeProto) -> list[str]:
    """A plugin node against its contract (plugins/<op>/contract.json): name, version, namespace, attributes
    and the number of inputs and outputs. Shapes and dtypes are checked with the graph's shapes (`check_static`)."""
    name = f"{node.op_type} node '{node.name}' (domain '{node.domain}')"
    contract = by_plugin(node.op_type)
    if contract is None:
        return [f"{name}: no plugin of this name has a contract in plugins/, so TensorRT has no creator for it"]
    attrs = attributes(node)
    problems = []
    for key, want in (("plugin_version", contract.version), ("plugin_namespace", contract.namespace)):
        if str(attrs.get(key)) != want:
            problems.append(f"{name}: {key} is {attrs.get(key)!r}, the plugin's contract says {want!r}")
    given = {a.name: a for a in node.attribute if not a.name.startswith("plugin_")}
    for attr in contract.attributes:
        if attr not in given:
            problems.append(f"{name}: attribute '{attr}' is missing")
        elif given[attr].type != onnx.AttributeProto.INT:
            problems.append(f"{name}: attribute '{attr}' must be an integer")
    if set(given) - set(contract.attributes):
        problems.append(f"{name}: attributes {sorted(set(given) - set(contract.attributes))} are not in its contract")
    if len(node.input) != len(contract.inputs) or len(node.output) != len(contract.outputs):
        problems.append(f"{name}: {len(node.input)} inputs and {len(node.output)} outputs, the contract says "
                        f"{len(contract.inputs)} and {len(contract.outputs)}")
    return problems


def _topk_problems(name: str, node: onnx.NodeProto, attrs: dict, constants: dict) -> list[str]:
    problems = []
    if attrs.get("sorted", 1) == 0:
        problems.append(f"{name}: sorted=0 is outside TensorRT's documented support (sorted must be 1); "
                        f"call topk with sorted=True")
    k_name = node.input[1] if len(node.input) > 1 else ""
    if k_name not in constants:
        problems.append(f"{name}: K comes from tensor '{k_name}', not a constant, so the output shape depends on a "
                        f"runtime value; call topk with a Python int k")
        return problems
    k = _constant_value(constants[k_name])
    if k is not None and int(np.max(k)) >= TOPK_MAX_K:
        problems.append(f"{name}: K={int(np.max(k))} is not below TensorRT's limit of {TOPK_MAX_K}")
    return problems


def _resize_problems(name: str, attrs: dict) -> list[str]:
    problems = []
    for key, allowed in _RESIZE_ALLOWED.items():
        if key == "nearest_mode" and attrs.get("mode", _RESIZE_DEFAULTS["mode"]) != "nearest":
            continue
        value = attrs.get(key, _RESIZE_DEFAULTS[key])
        if value not in allowed:
            problems.append(f"{name}: {key}='{value}' is not supported (TensorRT 10.3 accepts {', '.join(allowed)})")
    if attrs.get("antialias", 0):
        problems.append(f"{name}: antialias is not supported")
    return problems


def _load(model: ModelLike) -> tuple[onnx.ModelProto, Optional[Path]]:
    """A ModelProto, and the folder its external data lives in when it came from a path (weights not read)."""
    if isinstance(model, onnx.ModelProto):
        return model, None
    path = Path(model)
    if not path.is_file():
        raise ExporterError(f"ONNX graph '{path}' does not exist", "pass the path of an exported .onnx file")
    return onnx.load(str(path), load_external_data=False), path.parent
