# SPDX-License-Identifier: Apache-2.0
"""Where onnxruntime's time goes in a reduced model: the token-reduction machinery's share and the size bias's.

Measured with onnxruntime's per-node profiler on the optimised session the bench times, less the
profiler's own cost per node (`profiler_cost`), attributing nodes through the module path the exporter
records: method code runs outside timm's submodules, so a top-level node that is not the attention
between a block's qkv and proj, the stem or a residual add is the method's (see `overhead_nodes`).
"""
from __future__ import annotations

import ast
import bisect
import json
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..runtime import ort as ort_runtime
from .timing import mean_ms

# What a method adds to the dense model's time, as the bench reports it (see `overhead_nodes`).
OVERHEADS = ("machinery", "size bias")


@dataclass
class Profile:
    """What `profile_overheads` measured: each of `OVERHEADS` as a fraction of node time, the node
    time of one run (to compare with the timed run) and the profiler's own cost it excludes."""

    shares: dict[str, float]
    node_ms: float
    profiler_us: float


def overhead_nodes(model: onnx.ModelProto) -> dict[str, set[str]]:
    """Names of the nodes a method adds to the dense model, per kind (`OVERHEADS`): the token-selection
    machinery, and the size bias its attention adds.

    The method's code runs at the top level of the exported module (outside timm's submodules),
    and so does the model code that `ReducedViT` re-implements around timm's modules. A top-level
    node is the model's when it is
    - attention: on a path from a block's `attn.qkv` to the same block's `attn.proj` (reshapes,
      permutes, the attention product itself);
    - stem: not downstream of any `qkv` (class token, position embedding);
    - a residual: an Add or Concat with an input from a timm submodule (a block's attention or MLP).
    Everything else the method emitted is machinery, its reshapes and transposes included, except
    that the class-token slice before the head counts though it is the model's (one per model).
    An attention node that takes a machinery output is the size bias (ToMe's and DiffRate's
    +log(size), added to every attention logit).
    """
    nodes = list(model.graph.node)
    modules = {node.name: _module_path(node) for node in nodes}
    producer = {out: node for node in nodes for out in node.output}
    consumers = _consumers(nodes)

    def downstream(starts: list[onnx.NodeProto]) -> set[str]:
        return _reach(starts, lambda n: [c for out in n.output for c in consumers.get(out, [])])

    def upstream(starts: list[onnx.NodeProto]) -> set[str]:
        return _reach(starts, lambda n: [producer[i] for i in n.input if i in producer])

    def inside(suffix: str) -> dict[str, list[onnx.NodeProto]]:
        """Nodes of every module whose path ends with `suffix`, keyed by the attention module's path."""
        out: dict[str, list[onnx.NodeProto]] = {}
        for node in nodes:
            path = modules[node.name]
            if path.endswith(suffix):
                out.setdefault(path[: -len(suffix)], []).append(node)
        return out

    qkv, proj = inside(".qkv"), inside(".proj")
    attention = set()
    for attn, starts in qkv.items():
        attention |= downstream(starts) & upstream(proj.get(attn, []))
    stem = {n.name for n in nodes} - downstream([n for starts in qkv.values() for n in starts])
    in_submodule = {out for node in nodes if modules[node.name] for out in node.output}
    names = set()
    for node in nodes:
        if modules[node.name] or node.name in attention or node.name in stem:
            continue
        if node.op_type in ("Add", "Concat") and any(i in in_submodule for i in node.input):
            continue
        names.add(node.name)
    bias = {n.name for n in nodes if n.name in attention and any(i in producer and producer[i].name in names for i in n.input)}
    return dict(zip(OVERHEADS, (names, bias)))


def _module_path(node: onnx.NodeProto) -> str:
    """The innermost module a node was exported from ('' at the top level), from the dynamo
    exporter's `pkg.torch.onnx.name_scopes` (['', 'vit.blocks.0.attn.qkv', 'linear'])."""
    scopes = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), "['', '']")
    return ast.literal_eval(scopes)[-2]


def _consumers(nodes) -> dict[str, list[onnx.NodeProto]]:
    """Tensor name -> the nodes that read it."""
    out: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def _reach(starts: list[onnx.NodeProto], step: Callable[[onnx.NodeProto], list[onnx.NodeProto]]) -> set[str]:
    """Names of `starts` and every node reachable from them by `step`."""
    seen, todo = {n.name for n in starts}, list(starts)
    while todo:
        for nxt in step(todo.pop()):
            if nxt.name not in seen:
                seen.add(nxt.name)
                todo.append(nxt)
    return seen


def profile_overheads(path: Path, x: np.ndarray, threads: int, sessions: int = 3, runs: int = 10) -> Profile:
    """Fraction of node time spent in each kind of `overhead_nodes`, from onnxruntime's profiler on
    a session like the one the bench times (all graph optimisations on). Each node counts with its
    median time over `runs` runs after a warm-up run, less the profiler's own cost per node
    (`profiler_cost`, calibrated just before), and is charged to the exported node it computes
    (`_origins`); each share is the median over `sessions` fresh sessions, since one session's
    placement in memory can shift it by half a percentage point on a small machine."""
    exported = onnx.load(str(path), load_external_data=False)
    kinds = overhead_nodes(exported)
    shares: dict[str, list[float]] = {kind: [] for kind in kinds}
    totals, costs = [], []
    for _ in range(sessions):
        cost = profiler_cost(threads)  # each time: it follows the machine's speed, as the nodes do
        costs.append(cost)
        medians, optimized = _node_medians(path, x, threads, runs)
        medians = {name: max(t - cost, 0.0) for name, t in medians.items()}
        origin = _origins(optimized, exported)
        total = sum(medians.values())
        totals.append(total / 1000)
        for kind, names in kinds.items():
            shares[kind].append(sum(t for name, t in medians.items() if origin.get(name) in names) / (total or 1.0))
    return Profile({kind: statistics.median(v) for kind, v in shares.items()}, statistics.median(totals), statistics.median(costs))


def profiler_cost(threads: int, nodes: int = 200, runs: int = 30) -> float:
    """Microseconds onnxruntime's profiler adds to every node's recorded kernel time.

    It reads a node's start time before, and its end time after, formatting the node's input and
    output shapes and thread-pool statistics into strings (`KernelScope` in onnxruntime's
    sequential_executor.cc): about 9 µs on a 2-core VM, most of a small node's recorded time,
    which the timed, unprofiled run never pays. Calibrated on a chain of `nodes` no-op nodes
    (Unsqueeze and Squeeze of a [8, 99] tensor, graph optimisations off so they stay): their
    median recorded time less the unprofiled run's time per node. A node's time less this cost is
    its kernel plus the executor's per-node work, which the unprofiled run does pay."""
    import onnxruntime as ort  # loaded in a second: only when a graph is profiled

    chain = [helper.make_node("Unsqueeze" if i % 2 == 0 else "Squeeze", [f"t{i}", "axes"], [f"t{i + 1}"]) for i in range(nodes)]
    graph = helper.make_graph(
        chain, "noop_chain", [helper.make_tensor_value_info("t0", TensorProto.FLOAT, [8, 99])],
        [helper.make_tensor_value_info(f"t{nodes}", TensorProto.FLOAT, [8, 99])],
        [numpy_helper.from_array(np.array([2], dtype=np.int64), "axes")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10).SerializeToString()
    x = np.zeros((8, 99), dtype=np.float32)
    per_node = {}
    with tempfile.TemporaryDirectory() as tmp:
        for profiled in (False, True):
            options = ort_runtime.session_options(threads)
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            options.enable_profiling = profiled
            options.profile_file_prefix = str(Path(tmp) / "calibration")
            session = ort_runtime.session(model, options=options)
            for _ in range(10):
                session.run(None, {"t0": x})
            walls = [mean_ms(lambda: session.run(None, {"t0": x}), 1) * 1000 for _ in range(runs)]
            per_node[profiled] = statistics.median(walls) / nodes
            if profiled:
                events = json.loads(Path(session.end_profiling()).read_text())
                starts = sorted(e["ts"] for e in events if e.get("name") == "model_run")[-runs:]
                per_run = [[] for _ in starts]
                for _, ts, dur in _kernel_times(events, starts[0]):
                    per_run[bisect.bisect_right(starts, ts) - 1].append(dur)
                # whole microseconds each: a run's mean resolves what one value cannot; the median
                # over runs ignores a run the machine interrupted
                recorded = statistics.median(statistics.mean(durations) for durations in per_run)
    return max(recorded - per_node[False], 0.0)


def _node_medians(path: Path, x: np.ndarray, threads: int, runs: int) -> tuple[dict[str, float], onnx.ModelProto]:
    """Median kernel time per node name over `runs` profiled runs, and the optimised graph that ran."""
    options = ort_runtime.session_options(threads)
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        options.profile_file_prefix = str(Path(tmp) / "profile")
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name", "optimized.data")
        session = ort_runtime.session(path, options=options)
        for _ in range(runs + 1):
            ort_runtime.run(session, x)
        events = json.loads(Path(session.end_profiling()).read_text())
        optimized = onnx.load(options.optimized_model_filepath, load_external_data=False)
    warm = sorted(e["ts"] for e in events if e.get("name") == "model_run")[1]
    times: dict[str, list[float]] = {}
    for name, _, dur in _kernel_times(events, warm):
        times.setdefault(name, []).append(dur)
    return {name: statistics.median(durations) for name, durations in times.items()}, optimized


def _kernel_times(events: list[dict], since: float):
    """(node name, start, µs) of every kernel the profiler recorded from time `since` on."""
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= since:
            yield e["name"][: -len("_kernel_time")], e["ts"], e["dur"]


def _origins(optimized: onnx.ModelProto, exported: onnx.ModelProto) -> dict[str, str]:
    """Optimised node name -> the exported node it computes: the producer of the first exported
    tensor downstream of it. A fused node writes its pattern's last output (a Transpose folded into
    a MatMul is charged to the MatMul); a reshape or transpose onnxruntime inserts is charged to
    the node it feeds."""
    made_by = {out: node.name for node in exported.graph.node for out in node.output}
    consumers = _consumers(optimized.graph.node)
    origins = {}
    for node in optimized.graph.node:
        todo, seen = [node], {node.name}
        while todo and node.name not in origins:
            current = todo.pop(0)
            found = [made_by[out] for out in current.output if out in made_by]
            if found:
                origins[node.name] = found[0]
            nxt = [c for out in current.output for c in consumers.get(out, []) if c.name not in seen]
            seen.update(c.name for c in nxt)
            todo.extend(nxt)
    return origins
