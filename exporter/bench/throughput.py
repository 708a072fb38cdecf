"""Side-by-side throughput: every method (and model) against the first dense model, onnxruntime against PyTorch.

Each runtime holds its models in a process of its own (`Runtime`), so the two never fight over the
cores: while one is timed, the other waits in a blocking read with its threads asleep (onnxruntime
without spinning, OpenMP's wait policy passive). Candidates take turns round by round, with the same
thread settings (so a slow minute of the machine hits every one alike); each ratio comes from medians
of the same rounds. The first row is timed once more alone in a fresh process per runtime
(`lone_note`), which checks the absolute numbers.

The reduction machinery's share (scores, top-k, gathers, merging) and the share of the
size bias some methods add to attention are measured with onnxruntime's per-node profiler on the
optimised session the bench times, less the profiler's own cost per node (`profiler_cost`),
attributing nodes through the module path the exporter records: method code runs outside timm's
submodules, so a top-level node that is not the attention between a block's qkv and proj, the
stem or a residual add is the method's (see `overhead_nodes`).
"""
from __future__ import annotations

import ast
import bisect
import contextlib
import functools
import json
import multiprocessing
import os
import statistics
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import onnx
import torch

from ..errors import ExporterError
from ..export.onnx_export import export_onnx
from ..methods import apply_method, get_method
from ..methods.flops import count_gmacs
from ..runtime import ort as ort_runtime
# What a method adds to the dense model's time, as the bench reports it (see `overhead_nodes`).
OVERHEADS = ("machinery", "size bias")


@dataclass
class Candidate:
    label: str
    method: str
    params: dict
    model: torch.nn.Module
    gmacs: float
    schedule: Optional[list[int]]
    onnx_path: Optional[Path] = None
    ort_ms: list[float] = field(default_factory=list)
    torch_ms: list[float] = field(default_factory=list)
    profile: Optional["Profile"] = None  # where onnxruntime's node time goes (reduced models only)
    ort_alone_ms: list[float] = field(default_factory=list)  # the first row only: timed alone (`lone_note`)
    torch_alone_ms: list[float] = field(default_factory=list)


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
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

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
            walls = [_time(lambda: session.run(None, {"t0": x}), 1) * 1000 for _ in range(runs)]
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


def parse_models(text: str) -> dict[str, tuple[str, dict]]:
    """`--models a,b(arg=value, ...)` as label -> (timm name, constructor arguments); values are Python
    literals, e.g. `litv2_small(local_ws=(0, 0, 1, 1))`."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text + ","):
        depth += (ch in "([") - (ch in ")]")
        if ch == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    out = {}
    for part in filter(None, parts):
        try:
            call = ast.parse(part, mode="eval").body
            if isinstance(call, ast.Name):
                out[part] = (call.id, {})
                continue
            if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and not call.args):
                raise ValueError
            out[part] = (call.func.id, {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords})
        except (SyntaxError, ValueError) as e:
            raise ExporterError(
                f"--models entry '{part}' is neither a model name nor name(arg=value, ...).",
                "Write e.g. --models deit_small_patch16_224,litv2_small(alpha=0.0).",
            ) from e
    return out


def selected_methods(text: Optional[str]) -> list[str]:
    """`--methods a,b` as the methods to run, dense first (all when None); an unknown name fails here."""
    from ..methods import list_methods

    methods = list_methods() if text is None else ["none"] + [m for m in text.split(",") if m != "none"]
    for name in methods:
        get_method(name)
    return methods


def candidates(
    dense: torch.nn.Module,
    methods: list[str],
    img_size: tuple[int, int],
    prefix: str = "",
    log: Optional[Callable[[str], None]] = None,
) -> list[Candidate]:
    """Every method at its defaults on `dense`, labelled `prefix` + method and parameters. With `log`, a
    method that does not apply to the model is skipped with a line; without, its ExporterError is raised."""
    out = []
    for name in methods:
        params = get_method(name).resolve({})
        try:
            model = apply_method(dense, name, **params)
        except ExporterError as e:
            if log is None:
                raise
            log(f"skipping {prefix}{name}: {e.problem}")
            continue
        label = prefix + method_label(name, model.params)  # the parameters as resolved by the method
        out.append(Candidate(label, name, params, model, count_gmacs(model, img_size), model.schedule))
    return out


def method_label(method: str, params: dict) -> str:
    """A method and its parameters for a table, e.g. 'tome r=13 every block prop_attn=True'."""
    return method + "".join(f" {k}={_short(v)}" for k, v in params.items() if v is not None)


def _short(value) -> str:
    """A parameter for a table label: short lists in full, a constant per-block list as its value."""
    if not isinstance(value, (tuple, list)):
        return str(value)
    if len(value) <= 4:
        return ",".join(map(str, value))
    return f"{value[0]} every block" if len(set(value)) == 1 else "per-block"


def run(
    models: dict[str, torch.nn.Module],
    methods: list[str],
    img_size: tuple[int, int],
    batch: int,
    threads: int,
    rounds: int,
    iterations: int,
    opset: int = 18,
    log: Callable[[str], None] = print,
) -> list[Candidate]:
    """Time every method on every model (label -> dense model; all take `img_size`) in onnxruntime and
    PyTorch, each runtime in its own process (`Runtime`), then profile the reduced models' graphs.
    The caller's torch settings (threads included) are left as they were."""
    cands = []
    for name, dense in models.items():
        several = len(models) > 1  # then rows are labelled by model, and a method a model cannot take is skipped
        cands += candidates(dense, methods, img_size, f"{name} " if several else "", log if several else None)
    x = torch.randn(batch, 3, *img_size, generator=torch.Generator().manual_seed(0)).numpy()
    with tempfile.TemporaryDirectory(prefix="exporter-bench-") as tmp:
        for i, c in enumerate(cands):
            log(f"exporting {c.label}")
            path = Path(tmp) / f"{i}-{c.method}.onnx"
            c.onnx_path = export_onnx(c.model, path, img_size, (batch, batch, batch), opset)
        log("starting one process per runtime")
        with Runtime("ort", {i: c.onnx_path for i, c in enumerate(cands)}, x, threads) as ort_rt, \
                Runtime("torch", {i: c.model for i, c in enumerate(cands)}, x, threads) as torch_rt:
            timers = {}
            for i in range(len(cands)):
                timers[("ort", i)] = lambda n, i=i: ort_rt.time(i, n)
                timers[("torch", i)] = lambda n, i=i: torch_rt.time(i, n)
            times = interleaved(timers, rounds, iterations, log)
        for i, c in enumerate(cands):
            c.ort_ms, c.torch_ms = times[("ort", i)], times[("torch", i)]
        first = cands[0]
        log(f"timing {first.label} alone")
        for kind, model in (("ort", first.onnx_path), ("torch", first.model)):
            with Runtime(kind, {0: model}, x, threads) as alone:
                alone_ms = interleaved({0: lambda n: alone.time(0, n)}, rounds, iterations, lambda _: None)[0]
            setattr(first, f"{kind}_alone_ms", alone_ms)
        for c in cands:
            if c.schedule is not None:
                log(f"profiling {c.label}")
                c.profile = profile_overheads(c.onnx_path, x, threads)
    return cands


def timing_options(threads: int):
    """onnxruntime session options for timing: `threads` intra-op threads that sleep as soon as a run ends
    (no spinning), so nothing of a session keeps a core busy while another runtime is timed."""
    options = ort_runtime.session_options(threads)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class Runtime:
    """One runtime's models in a process of its own: `time(key, iterations)` returns the mean ms per call
    of `iterations` back-to-back calls, measured in that process, and `latencies` each call's ms; with
    `batch`, the calls take the first `batch` rows of `x` (every model takes all of `x` otherwise).

    `models` maps keys to what `kind` runs (`KINDS`), each timed with `threads` intra-op threads:
    - 'ort': ONNX paths, run with `timing_options(threads)` (a plugin graph's plugin nodes run the token
      ops' Python reference, `runtime.op_reference`);
    - 'torch': modules (pickled to the process), run on the CPU under no_grad with OpenMP's passive wait
      policy (its threads sleep between parallel regions);
    - 'torch-cuda-fp16', 'torch-cuda-graph-fp16': modules run in fp16 on the GPU, as module calls or as
      replays of a CUDA graph captured per batch size (`cuda.graphed`), each call synchronised;
    - 'tensorrt', 'tensorrt-rtx': (bundle, engine folder, engine.json entry) run by `runtime.engine_runner`
      (host arrays in and out: the copies are timed too).
    Use as a context manager: the process ends on exit.
    """

    def __init__(self, kind: str, models: dict, x: np.ndarray, threads: int):
        self.kind = kind
        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no thread pool inherited
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(target=_serve, args=(child, kind, models, x, threads), daemon=True)
        with _environ(OMP_WAIT_POLICY="PASSIVE"):  # read by OpenMP when the process loads torch
            self._process.start()
        child.close()
        self.pid = self._ask("pid")  # answered once the models are loaded

    def time(self, key, iterations: int, batch: Optional[int] = None) -> float:
        return statistics.fmean(self.latencies(key, iterations, batch))

    def latencies(self, key, iterations: int, batch: Optional[int] = None) -> list[float]:
        return self._ask("time", key, iterations, batch)

    def _ask(self, *message):
        self._conn.send(message)
        try:
            status, value = self._conn.recv()
        except EOFError:
            raise RuntimeError(f"the {self.kind} benchmark process died (exit code {self._process.exitcode})") from None
        if status == "error":
            raise RuntimeError(f"the {self.kind} benchmark process failed:\n{value}")
        return value

    def close(self) -> None:
        if self._process.is_alive():
            with contextlib.suppress(OSError):
                self._conn.send(("close",))
            self._process.join(timeout=60)
            if self._process.is_alive():
                self._process.kill()
        self._conn.close()

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


KINDS = ("ort", "torch", "torch-cuda-fp16", "torch-cuda-graph-fp16", "tensorrt", "tensorrt-rtx")


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    """`values` set in os.environ (what a spawned process starts with) for the block, then restored."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _serve(conn, kind: str, models: dict, x: np.ndarray, threads: int) -> None:
    """A `Runtime`'s process: load the models, then answer requests until ('close',)."""
    with contextlib.ExitStack() as stack:
        try:
            torch.set_num_threads(threads)  # also the plugin reference ops' threads in an 'ort' process
            prepare = _loaded(kind, models, threads, stack)
        except Exception:
            conn.recv()
            conn.send(("error", traceback.format_exc()))
            return
        calls = {}  # (key, batch) -> call, made on first use
        with torch.no_grad():
            while True:
                message = conn.recv()
                try:
                    if message[0] == "close":
                        return
                    if message[0] == "pid":
                        conn.send(("ok", os.getpid()))
                        continue
                    _, key, iterations, batch = message
                    if (key, batch) not in calls:
                        calls[key, batch] = prepare[key](x if batch is None else x[:batch])
                    conn.send(("ok", _latencies(calls[key, batch], iterations)))
                except Exception:
                    conn.send(("error", traceback.format_exc()))


def _loaded(kind: str, models: dict, threads: int, stack: contextlib.ExitStack) -> dict:
    """key -> a function from an input array to a call of that key's model on it (see `Runtime`)."""
    if kind == "ort":
        sessions = {key: _timing_session(path, threads) for key, path in models.items()}
        return {key: functools.partial(_ort_call, s) for key, s in sessions.items()}
    if kind == "torch":
        return {key: functools.partial(_torch_call, m.eval()) for key, m in models.items()}
    if kind in ("torch-cuda-fp16", "torch-cuda-graph-fp16"):
        torch.backends.cudnn.benchmark = True  # as timm's benchmark.py: the patch embedding gets a fast algorithm
        graph = kind == "torch-cuda-graph-fp16"
        on_gpu = {key: m.to("cuda", torch.float16).eval() for key, m in models.items()}
        return {key: functools.partial(_cuda_call, m, graph) for key, m in on_gpu.items()}
    if kind in ("tensorrt", "tensorrt-rtx"):
        from ..runtime import engine_runner

        runners = {key: stack.enter_context(engine_runner(*where)) for key, where in models.items()}
        return {key: functools.partial(_engine_call, r) for key, r in runners.items()}
    raise ValueError(f"unknown runtime kind {kind!r} (one of {', '.join(KINDS)})")


def _timing_session(path: Path, threads: int):
    """A session with `timing_options`; a plugin graph's plugin nodes run the reference ops."""
    from ..runtime import op_reference

    options = timing_options(threads)
    if op_reference.has_plugins(onnx.load(str(path), load_external_data=False)):
        return op_reference.session(path, options=options)
    return ort_runtime.session(path, options=options)


def _ort_call(session, x: np.ndarray) -> Callable[[], object]:
    inputs = ort_runtime.feed(session, x)  # cast once, outside the timed calls
    return lambda: session.run(None, inputs)


def _torch_call(model: torch.nn.Module, x: np.ndarray) -> Callable[[], object]:
    tensor = torch.from_numpy(x)
    return lambda: model(tensor)


def _engine_call(runner: Callable[[np.ndarray], list[np.ndarray]], x: np.ndarray) -> Callable[[], object]:
    return lambda: runner(x)


def _cuda_call(model: torch.nn.Module, graph: bool, x: np.ndarray) -> Callable[[], None]:
    from .cuda import graphed, synced

    tensor = torch.from_numpy(x).to("cuda", torch.float16)
    return synced(graphed(model, tensor) if graph else lambda: model(tensor))


def interleaved(timers: dict, rounds: int, iterations: int, log: Callable[[str], None] = print) -> dict:
    """Milliseconds per call of every entry of `timers` (key -> function of a number of iterations returning
    the mean ms per call, or each call's ms; `local` makes one of a plain call), one value per round. After one untimed
    iteration each, every round times the entries in turn, so a slow minute of the machine hits them
    alike; compare them with medians of per-round `ratios`."""
    for timer in timers.values():
        timer(1)
    times: dict = {key: [] for key in timers}
    for r in range(rounds):
        log(f"round {r + 1}/{rounds}")
        for key, timer in timers.items():
            times[key].append(timer(iterations))
    return times


def local(fn: Callable[[], object]) -> Callable[[int], float]:
    """A timer for `interleaved` of a call made in this process."""
    return lambda iterations: _time(fn, iterations)


def _time(fn, iterations: int) -> float:
    """Mean milliseconds per call over `iterations` back-to-back calls."""
    start = time.perf_counter()
    for _ in range(iterations):
        fn()
    return (time.perf_counter() - start) * 1000 / iterations


def _latencies(fn, iterations: int) -> list[float]:
    """Milliseconds of each of `iterations` back-to-back calls."""
    out = []
    for _ in range(iterations):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


def table(cands: list[Candidate], batch: int) -> str:
    """Markdown: per candidate, FLOPs ratio next to the measured speedups, both against the first row. Times
    are medians over rounds; each ratio is the median of its per-round ratios, so a drift of the machine's
    speed between rounds (which hits both sides of a round alike) cancels. The speedup's range over rounds
    is shown beside it: how far one round can be trusted. The main runtime is onnxruntime when it was
    timed (then PyTorch is compared with it), else PyTorch; share columns appear when a row was profiled."""
    ref = cands[0]
    main, runtime = ("ort_ms", "ORT") if ref.ort_ms else ("torch_ms", "PyTorch")
    both = bool(ref.ort_ms and ref.torch_ms)
    profiled = any(c.profile for c in cands)
    head = ["method", "GMACs", "FLOPs ratio", f"{runtime} ms/batch", f"{runtime} img/s", "measured speedup",
            "speedup / FLOPs ratio"]
    head += ["machinery share", "size-bias share"] if profiled else []
    head += ["PyTorch ms/batch", "ORT vs PyTorch"] if both else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in cands:
        ms = statistics.median(getattr(c, main))
        flops_ratio = ref.gmacs / c.gmacs
        per_round = ratios(getattr(ref, main), getattr(c, main))
        speedup = statistics.median(per_round)
        row = [c.label, f"{c.gmacs:.2f}", f"{flops_ratio:.2f}x", fmt_ms(ms), f"{batch * 1000 / ms:.1f}",
               f"{speedup:.2f}x ({min(per_round):.2f}–{max(per_round):.2f})", f"{speedup / flops_ratio:.2f}"]
        if profiled:
            measured = c.profile.shares if c.profile else {}
            row += [f"{measured[k]:.1%}" if measured.get(k) else "—" for k in OVERHEADS]
        if both:
            row += [fmt_ms(statistics.median(c.torch_ms)), f"{statistics.median(ratios(c.torch_ms, c.ort_ms)):.2f}x"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def fmt_ms(value: float) -> str:
    """Milliseconds to 0.1 ms, or 0.01 ms below 10 ms (GPU batches)."""
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def lone_note(cands: list[Candidate]) -> str:
    """The first row's medians when it ran alone, in a fresh process per runtime, next to its medians in
    the interleaved rounds: the check that taking turns did not change the absolute numbers."""
    first = cands[0]
    runtimes = [("onnxruntime", first.ort_alone_ms, first.ort_ms), ("PyTorch", first.torch_alone_ms, first.torch_ms)]
    return alone_note(first.label, runtimes)


def alone_note(label: str, runtimes: list[tuple[str, list[float], list[float]]]) -> str:
    """`label`'s median ms alone next to its median ms interleaved, per (runtime, alone, interleaved)."""
    parts = []
    for name, alone, together in runtimes:
        if alone and together:
            a, t = statistics.median(alone), statistics.median(together)
            parts.append(f"{name} {fmt_ms(a)} ms alone, {fmt_ms(t)} ms interleaved ({t / a - 1:+.0%})")
    return f"{label} timed alone in a fresh process: " + "; ".join(parts) + "." if parts else ""


def profile_note(cands: list[Candidate]) -> str:
    """How far the shares can be trusted: the profiler cost they exclude, and how the node time left
    compares with the timed (unprofiled) runs; near 100% means the profile accounts for the run."""
    profiled = [c for c in cands if c.profile]
    if not profiled:
        return ""
    costs = [c.profile.profiler_us for c in profiled]
    covered = [c.profile.node_ms / statistics.median(c.ort_ms) for c in profiled]
    return (
        f"Shares exclude the {min(costs):.1f}–{max(costs):.1f} µs that onnxruntime's profiler adds to every node's "
        f"recorded time (calibrated per session); the node time left is {min(covered):.0%}–{max(covered):.0%} "
        "of the timed run."
    )


def ratios(slower: list[float], faster: list[float]) -> list[float]:
    """Per round, slower[r] / faster[r]."""
    return [a / b for a, b in zip(slower, faster)]
